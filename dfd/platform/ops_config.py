"""The operations sections of `params.yaml`: tracking, alerts, schedule, task runner, S3 storage, serving.

Split from `dfd/platform/config.py` (the pipeline's stage sections and the loader) to keep each module small;
`config.py` imports these into the one `Params` schema, so `from dfd.platform.config import XParams` still works.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dfd.platform.config_base import _Section


class MlflowParams(_Section):
    """Tracking; the environment's MLFLOW_TRACKING_URI wins over the value here."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "deepfake-detection"
    # A tracking server that dies mid-run must fail the run in seconds: MLflow's own defaults (7 retries with
    # exponential backoff, 120 s timeouts) hang it for 13+ minutes. The environment's MLFLOW_HTTP_REQUEST_* win.
    http_max_retries: int = Field(2, ge=0)
    http_timeout_s: int = Field(10, ge=1)


class EmailAlertParams(_Section):
    """One plain-text email per alert over SMTP; the password never sits in params."""

    enabled: bool = False
    to: list[str] = Field(default_factory=list)
    sender: str = "dfd@localhost"
    host: str | None = None
    port: int = Field(587, ge=1, le=65535)  # the submission port, which speaks STARTTLS
    security: Literal["starttls", "ssl", "plain"] = "starttls"  # plain only for a relay on a trusted network
    username: str | None = None  # None: no login
    password_env: str = "DFD_SMTP_PASSWORD"  # the NAME of the environment variable holding the password
    password_block: str | None = None  # or the name of a Prefect Secret block holding it (wins over the env var)
    ca_file: str | None = None  # PEM bundle of a private CA that signed the server's certificate; None: the system's


class SlackAlertParams(_Section):
    """One message per alert to a Slack incoming webhook; the URL is a secret, so only its source is named here."""

    enabled: bool = False
    webhook_env: str = "DFD_SLACK_WEBHOOK"  # the NAME of the environment variable holding the webhook URL
    webhook_block: str | None = None  # or the name of a Prefect Secret block holding it (wins over the env var)


class AlertParams(_Section):
    """Who is told when a gate fails or a run fails or crashes; every channel is off unless enabled."""

    email: EmailAlertParams = EmailAlertParams()
    slack: SlackAlertParams = SlackAlertParams()
    attempts: int = Field(3, ge=1, le=10)  # per channel: a busy relay gets another chance, a dead one costs seconds
    timeout_s: float = Field(10.0, gt=0, le=120)  # per attempt: an alert must never hang the run it reports on
    # Base URL of the MLflow UI for links when tracking is not over http (sqlite + `mlflow ui`); None: no link.
    mlflow_ui_url: str | None = None
    # A cancelled run (UI, `prefect flow-run cancel`) is someone's decision, not a failure: no alert unless asked.
    on_cancel: bool = False
    # Off: SMTP login without TLS (`security: plain` with a username) and http:// webhooks are refused, because both
    # send the secret in clear. On only for a relay or receiver on a trusted network (or a test on loopback).
    allow_insecure: bool = False


class ScheduleParams(_Section):
    """The weekly deployment (`dfd deploy`); also written into prefect.yaml by `dfd deploy --write-prefect-yaml`."""

    cron: str = "0 3 * * 1"  # Monday 03:00: the GPUs are idle and the week's new data has landed
    timezone: str = "UTC"  # IANA name; the cron is read in this zone (so 03:00 stays 03:00 across DST changes)
    work_pool: str = "dfd-pool"  # a process work pool: `prefect work-pool create dfd-pool --type process`
    # The flow parameters the deployments run with: params files relative to the worker's project folder.
    params_path: str = "params.yaml"
    overrides: list[str] = Field(default_factory=list)
    project_dir: str | None = None  # the project folder the worker runs in; None: the folder `dfd deploy` runs in


class RunnerParams(_Section):
    """Where the flow's tasks run (the four training tasks in parallel)."""

    kind: Literal["threads", "dask", "ray"] = "threads"  # threads: one machine; dask/ray: a cluster (extras)
    max_workers: int = Field(4, ge=1)  # threads: one per model
    # dask: None starts a local cluster of `dask_workers` processes; else the scheduler, e.g. tcp://host:8786.
    address: str | None = None
    dask_workers: int = Field(2, ge=1)
    # GPUs each training task reserves (Dask resources / Ray num_gpus): 0 on a CPU cluster, 1 gives each model its own.
    gpus_per_task: int = Field(0, ge=0)
    # dask: samples per face-extraction task. None: about 8 chunks per worker (videos differ tenfold in cost) and at
    # most 64 samples, so a killed worker costs at most one chunk's rerun.
    faces_chunk: int | None = Field(None, ge=1)


class StorageParams(_Section):
    """S3 (AWS or an S3-compatible server such as MinIO) through boto3; credentials only from the environment."""

    # None: AWS itself, or the endpoint in $DFD_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL (the environment wins).
    endpoint_url: str | None = None
    region: str = "us-east-1"
    # Bounded retries and short timeouts: an unreachable endpoint must fail in seconds, not hang a weekly run.
    max_attempts: int = Field(3, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)


#: The precisions each inference engine runs (torch: autocast; onnxruntime: the exported fp32 or int8 members).
ENGINE_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "int8")}


class ServeParams(_Section):
    """Scoring media with the registered model: `dfd predict`, `dfd serve`, the pyfunc's media input."""

    max_upload_bytes: int = Field(200_000_000, ge=1)  # larger uploads get 413 before they are decoded
    max_video_frames: int = Field(54_000, ge=1)  # longer videos are refused (reason too_long): 30 min at 30 fps
    max_video_seconds: float = Field(1800.0, gt=0)
    request_timeout_s: float = Field(120.0, gt=0)  # a request still scoring after this gets 504
    max_concurrent: int = Field(2, ge=1)  # requests scored at once; more wait (one per core: scoring is CPU-bound)
    poll_interval_s: float = Field(30.0, ge=0)  # how often the server asks the registry where the alias points; 0: off
    # fp32 scores exactly as the gate evaluated. bf16 (CPUs with AVX512-BF16 or AMX, GPUs) or fp16 (GPUs) is about
    # 2x faster on such hardware, and is checked at load: the model's example crops are scored both ways, and a
    # precision that moves P(fake) by more than max_precision_error is refused.
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32"
    max_precision_error: float = Field(0.02, gt=0, le=1)
    # What runs the members: torch (as evaluated), or ONNX Runtime over the ONNX files logged with the version
    # (`ensemble.export.onnx`; precision fp32 or int8), checked against torch fp32 at load like a reduced precision.
    # Where onnxruntime is not installed the model falls back to torch and says so once.
    engine: Literal["torch", "onnxruntime"] = "torch"
    # `POST /predict` with JSON {"paths": [...]}: files on the server's disk, only under these folders. Off when
    # empty: a client must not make the server read arbitrary files.
    path_roots: list[str] = Field(default_factory=list)
    # `dfd serve` exposed (docs/guides/serving.md, "Auth and limits"). The NAME of the environment variable holding
    # the bearer token, never the token: params are committed and logged.
    auth_token_env: str = "DFD_SERVE_TOKEN"
    max_json_bytes: int = Field(32_000_000, ge=1)  # JSON bodies: ~50 crops of 224x224 as MLflow JSON; 413 past it
    max_paths: int = Field(256, ge=1)  # files per JSON path list: one request must not hold the server for hours
    # Read from the header before decoding: a 400 KB PNG can claim 20000x20000 (1.2 GB decoded). 50 MP passes any
    # phone photo; a video frame past DCI 4K (4096x2160) is no camera clip the detectors were trained on.
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_video_pixels: int = Field(4096 * 2160, ge=1)
    # What is decoded at all: image formats (by the header Pillow reads), video containers (by their magic bytes,
    # before FFmpeg sees the file) and codecs (from the stream header). Every other parser stays out of reach.
    image_formats: list[Literal["png", "jpeg", "bmp", "webp"]] = Field(
        default_factory=lambda: ["png", "jpeg", "bmp", "webp"])
    video_containers: list[Literal["mp4", "matroska", "avi"]] = Field(  # mp4: ISO/QuickTime (.mov); matroska: .webm
        default_factory=lambda: ["mp4", "matroska", "avi"])
    video_codecs: list[Literal["h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mjpeg"]] = Field(
        default_factory=lambda: ["h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mjpeg"])
    # Served-traffic records (`monitor:`) never hold a file name or a client address unless this says so: names
    # can identify the people in the media.
    log_names: bool = False
    # `POST /invocations`: a face crop is one row of the ensemble (~100 ms on a CPU core): 64 crops are a video's
    # 32 sampled frames with two faces each. Crops are resized to each member's input (224-380 px): a side past
    # 1024 px is memory, not detail.
    max_crops: int = Field(64, ge=1)
    max_crop_side: int = Field(1024, ge=1)
    # A request that finds every scoring slot busy this long gets 503 with Retry-After, never an endless queue.
    slot_wait_s: float = Field(30.0, gt=0)
    # A progressive JPEG decodes once per scan: ~10 is usual, thousands is a CPU bomb that cv2.imread cannot stop.
    # SOS markers are counted in the raw bytes before decoding (an EXIF thumbnail's count too: conservative).
    max_jpeg_scans: int = Field(100, ge=1)
    # `process`: decode and score in kept-alive worker processes (one per max_concurrent slot, one model copy each)
    # that are killed and restarted when a request overruns request_timeout_s; `thread`: in this process (a
    # debugger; cooperative cancel only, so a stuck decoder holds its slot).
    isolation: Literal["process", "thread"] = "process"
    # Each worker's address-space limit (RLIMIT_AS): a worker holding the test suite's tiny ensemble peaked at
    # 4.4 GiB of virtual memory after scoring (torch's and OpenMP's reservations are most of it), a large ensemble
    # maps a few GB more; 16 GiB leaves room for a 4K video's frames and stops a decoder bomb long before the host
    # swaps. 0: no limit (sanitizers, CUDA, which map huge ranges).
    worker_memory_bytes: int = Field(16 * 2**30, ge=0)
    # JSON path lists carry names, never data: 256 paths of 4096 characters fit in 1.1 MB.
    max_path_json_bytes: int = Field(1_100_000, ge=1)
    # Files named by one path list are copied into the request's private folder before they are checked; together
    # at most this many bytes (a path list of max_paths files of max_upload_bytes each would be 51 GB).
    max_path_bytes: int = Field(400_000_000, ge=1)
    # More tokens at once (comma-separated), so that one can be rotated without downtime: every token in either
    # variable is accepted. The NAME of the variable, never its value.
    auth_tokens_env: str = "DFD_SERVE_TOKENS"
    # Requests a minute per client (its token when it sends one, else its address; /health excepted); more get
    # 429 with Retry-After. Ten times what max_concurrent slots can score of single images, a bound on floods
    # rather than on honest use. 0: off.
    rate_limit_per_minute: int = Field(600, ge=0)

    # Abstaining (docs/guides/explain.md): a face whose box's longer side is under min_face_px pixels is not scored
    # (below it the crop is mostly upsampling blur, which the detectors read as manipulation); a video with fewer
    # frames with a scorable face than min_frames (or than faces.frames_per_video when that is smaller) gets status
    # not_applicable rather than a P(fake) from one or two frames. Under worst_track a track needs as many frames.
    min_face_px: int = Field(40, ge=1)
    min_frames: int = Field(3, ge=1)
    # How a file's verdict comes from its faces: largest_face (the largest face per frame, every face pooled for a
    # model trained with faces.all_faces) or worst_track (every face tracked, each track aggregated, the file called
    # by its most fake-looking track). The evaluate stage scores the test files under both and the gate judges this
    # one (its served_rule row); worst_track can be judged only for a model whose faces were extracted with
    # faces.all_faces, so the default stays largest_face (the worst of several tracks raises false positives).
    file_rule: Literal["largest_face", "worst_track"] = "largest_face"
    # Sampled frames a track may miss a detection and still continue: frames_per_video samples can be seconds
    # apart, and one missed detection must not split a person into two tracks. The faces stage tracks with it too
    # (faces.all_faces), so the tracks evaluation judges are the ones serving forms.
    track_max_gap: int = Field(2, ge=0)  # dfd.data.face_tracking.TRACK_MAX_GAP
    # `POST /predict?explain=1` (docs/guides/serving.md, "Explanations"): the `dfd predict --report` content as JSON.
    # Off: an explanation's heatmaps cost a backward pass through every member for each driving frame (a scoring's
    # forward passes cost a fraction of that), and its overlays embed people's faces in an answer a client keeps.
    explain: bool = False
    # An explain request's scoring and heatmaps together, in one worker: killed and answered 504 past this (its
    # upload's receiving stays under request_timeout_s). As long as a scoring: the heatmaps' backward passes run
    # on at most report.heatmap_frames crops, fewer than a video's sampled faces.
    explain_timeout_s: float = Field(120.0, gt=0)
    # Face crops and heatmap overlays in explain answers, only where report.embed_faces allows them too. Off: the
    # server's answers leave the machine, and a face is personal data (`dfd predict --report` writes local files).
    explain_faces: bool = False

    @model_validator(mode="after")
    def _engine_precision(self) -> ServeParams:
        allowed = ENGINE_PRECISIONS[self.engine]
        if self.precision not in allowed:
            raise ValueError(f"serve.precision {self.precision} is not run by serve.engine {self.engine}: "
                             f"one of {', '.join(allowed)}")
        return self


class ReportParams(_Section):
    """`dfd predict --report DIR`: the HTML report a reviewer keeps, and `dfd serve`'s explain answers (the same
    content as JSON; docs/guides/explain.md)."""

    # Face crops and heatmap overlays (drawn over the face) inside the report. On: a reviewer must see the face to
    # judge; reports hold people's faces, so whoever shares them decides. File names follow serve.log_names.
    # `dfd serve`'s explain answers embed them only when serve.explain_faces is on too (off by default).
    embed_faces: bool = True
    heatmap_frames: int = Field(3, ge=0)  # the frames that drove the verdict, with heatmaps; 0: none (no gradients)


class MonitorParams(_Section):
    """Production monitoring: served-traffic records (`dfd serve`, `dfd predict --log`) and `dfd monitor`."""

    # Where `dfd serve` appends one record per scored file, as Parquet parts under one folder per day; a folder
    # (relative to the project) or s3://bucket/prefix. None: no records (and `dfd monitor` has nothing to read).
    log_dir: str | None = "monitoring/traffic"
    retention_days: int = Field(90, ge=1)  # day folders older than this are deleted by the writer (its own only)
    flush_interval_s: float = Field(30.0, gt=0)  # a part file at most this often: one per request would flood S3
    flush_records: int = Field(500, ge=1)  # ...or as soon as this many records wait
    queue_size: int = Field(10_000, ge=1)  # records waiting for the writer; beyond it they are dropped and counted
    window: str = "7d"  # `dfd monitor`'s default window (`--since`): the weekly run looks at the week that passed
    min_records: int = Field(50, ge=1)  # fewer scored files in the window: "too few records", never a verdict
    # Alert thresholds. Drift share as the gate's `max_drift_share`; PSI 0.25 is the usual "significant shift" mark
    # (0.1-0.25 moderate); a no-face rate 0.2 above the training data's means the inputs stopped looking like faces.
    max_drift_share: float = Field(0.5, ge=0, le=1)
    max_psi: float = Field(0.25, ge=0)
    # ...only when chance cannot explain it: under no drift E[PSI] ~ (bins - 1)(1/n + 1/m), 0.26 for 300 reference
    # files and a 50-file window; the chi-square test on PSI's own bins holds its level (dfd/monitoring/psi.py).
    psi_alpha: float = Field(0.05, gt=0, le=1)
    # ...and the K-S test agrees: PSI over a few dozen files is noisy (0.4 measured on 40 unshifted demo images,
    # K-S p=0.19); over a week's thousands any real shift is significant anyway.
    ks_alpha: float = Field(0.05, gt=0, le=1)
    max_no_face_increase: float = Field(0.2, ge=0, le=1)
    reference_max_samples: int = Field(2000, ge=10)  # training samples whose crops make the reference, seeded
    psi_bins: int = Field(10, ge=2)  # quantile bins of the reference's P(fake)
    weeks_plotted: int = Field(12, ge=1)  # the weekly series' length
    # A drifted week runs the training part of the weekly flow even when the dataset has not changed.
    retrain_on_drift: bool = False
