"""The typed schema of `params.yaml`: one frozen model per stage, unknown keys rejected.

Defaults live here, beside a comment saying why they are what they are; `params.yaml` repeats them so that DVC can
track every value. Small runs (the demo, the tests) layer an override file on top (`configs/demo.yaml`), so the same
code runs at every size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dfd.platform.errors import ConfigError

#: Environment variable naming extra override files (os.pathsep-separated), applied after `params.yaml`.
OVERRIDE_ENV = "DFD_PARAMS_OVERRIDE"


class _Section(BaseModel):
    """Base of every section: frozen, and unknown keys are errors rather than silently ignored typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """Where the raw dataset lives and where derived data goes."""

    name: str = "demo"  # names the manifest (`<workdir>/manifests/<name>.parquet`) and the MLflow dataset input
    adapter: str = "folder"  # dataset layout adapter, chosen by name (see tasks/ingest.py)
    root: str = "data/raw/demo"  # dataset root; `dfd demo-data` writes here by default
    workdir: str = "data"  # manifests/ and faces/ are written under it
    # Adapter options (ignored by adapters they do not apply to):
    compression: str = "c23"  # FaceForensics++: c0 (raw), c23 (the usual benchmark) or c40
    methods: list[str] | None = None  # FaceForensics++: manipulation methods to include; None = all present
    splits_dir: str | None = None  # FaceForensics++: folder of official train/val/test.json; None = <root>/splits


class DemoDataParams(_Section):
    """The offline demo dataset generator (`dfd demo-data`)."""

    identities: int = 40  # enough that the identity-disjoint val and test splits hold several people each
    images_per_identity: int = 5
    videos: int = 6  # short .mp4 clips, half real, half fake, to exercise the video path
    frames_per_video: int = 12
    image_size: int = 256  # dlib's HOG detector needs faces of about 80 px or more


class IngestParams(_Section):
    """Manifest building: splits and the tolerance for bad inputs."""

    # Shares of identities (not samples) per split: a person never straddles two splits.
    val_share: float = Field(0.15, ge=0.0, lt=1.0)
    test_share: float = Field(0.15, ge=0.0, lt=1.0)
    max_bad_share: float = Field(0.2, ge=0.0, le=1.0)  # above this share of unreadable inputs, stop the run
    min_per_class: int = Field(1, ge=1)  # a class with fewer samples is an error, not a silent imbalance

    @model_validator(mode="after")
    def _shares_leave_training_data(self) -> IngestParams:
        if self.val_share + self.test_share >= 1.0:
            raise ValueError("val_share + test_share must be below 1 so that something is left to train on")
        return self


class FacesParams(_Section):
    """Face extraction: frame sampling, detection and cropping."""

    detector: str = "dlib_hog"  # by name; dlib's HOG ships with the package, so it works offline
    frames_per_video: int = Field(32, ge=1)  # sampled uniformly over the clip
    detect_max_side: int = Field(640, ge=64)  # detect on a copy downscaled to this, then map boxes back
    upsample: int = Field(1, ge=0, le=3)  # HOG pyramid upsampling: 1 finds faces down to about 40 px
    margin: float = Field(1.3, ge=1.0)  # crop side = margin x box side, the usual DeepfakeBench setting
    crop_size: int = Field(320, ge=32)  # no model input exceeds it (Xception and F3Net read 299)
    landmarks: bool = True  # the 68 points feed alignment and landmark-based augmentations
    all_faces: bool = False  # False: the largest face per frame (the subject); True: every face, tracked by IoU
    workers: int = Field(2, ge=1)  # processes; one per core is right, dlib is single-threaded


class ModelParams(_Section):
    """One detector to train; every field left empty falls back to the architecture's registered config."""

    arch: str | None = None  # registry name; defaults to the key under `models:`
    input_size: int | None = None  # None: the size from the model's registered config
    # A local weights file, or `hub` (timm's ImageNet weights: needs network); None trains from scratch.
    pretrained: str | None = None
    lr: float | None = None  # overrides train.lr for this model
    batch_size: int | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra constructor arguments


class TrainParams(_Section):
    """What every training task shares."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)  # AdamW at 2e-4 is the DeepfakeBench default for these backbones
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    scheduler: Literal["cosine", "step", "plateau", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)  # linear warm-up: fresh heads on big batches diverge at full rate
    step_epochs: int = Field(5, ge=1)  # step schedule: multiply by gamma every this many epochs
    gamma: float = Field(0.1, gt=0, le=1)  # step and plateau decay
    plateau_patience: int = Field(2, ge=0)  # epochs without a better val AUC before the plateau cut
    # Per-image augmentations by name (dfd/training/augment.py); `sbi` and `landmark_cutout` use the face landmarks.
    augment: list[str] = Field(default_factory=lambda: ["hflip", "color_jitter", "jpeg"])
    sbi_prob: float = Field(0.5, ge=0, le=1)  # share of real crops turned into self-blended fakes when `sbi` is on
    cutout_prob: float = Field(0.3, ge=0, le=1)  # share of crops with a face part blanked when `landmark_cutout` is on
    batch_augment: list[str] = Field(default_factory=list)  # mixup, cutmix
    batch_augment_prob: float = Field(0.5, ge=0, le=1)
    mix_alpha: float = Field(0.4, gt=0)  # Beta(alpha, alpha) mixing ratio
    balanced_sampling: bool = True  # draw real and fake equally often: datasets are often 1:4 or worse
    grad_accum_steps: int = Field(1, ge=1)  # effective batch = batch_size x this (x GPUs)
    grad_clip: float | None = 5.0  # max gradient norm; None: off
    early_stop_patience: int | None = 5  # epochs without a better val AUC before stopping; None: off
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 where the GPU supports it, else fp16; off on CPU
    channels_last: bool = False  # GPU opt-in: faster convolutions on tensor cores
    compile: bool = False  # GPU opt-in: torch.compile the model
    max_steps_per_epoch: int | None = None  # caps an epoch (smoke runs); None: the whole training set
    num_workers: int = Field(2, ge=0)
    device: str = "auto"  # "auto" picks CUDA when present
    torch_threads: int | None = None  # per task; None leaves torch's default
    seed: int = 1337


class AggregationParams(_Section):
    """Frame scores to a video score (dfd/evaluation/aggregate.py); evaluation and serving use the same rule."""

    method: Literal["mean", "median", "confident"] = "mean"
    # The `confident` rule's constants are the DFDC winner's: more than n/2.5 and more than 11 frames above 0.8
    # make a video fake on those frames alone; more than 90% below 0.2 make it real on those.
    fake_threshold: float = Field(0.8, gt=0, lt=1)
    fake_share_divisor: float = Field(2.5, gt=0)
    min_fake_frames: int = Field(11, ge=0)
    real_threshold: float = Field(0.2, gt=0, lt=1)
    real_share: float = Field(0.9, gt=0, le=1)


class EnsembleParams(_Section):
    """Weighted-average fusion with weights searched by Optuna on validation predictions."""

    method: Literal["weighted_average"] = "weighted_average"
    trials: int = Field(50, ge=1)
    # AUC is what the gate judges (the threshold comes from validation, so calibration is not needed); log loss
    # also rewards calibration, but lets one over-confident member lose its weight however well it ranks.
    objective: Literal["log_loss", "auc"] = "auc"
    seed: int = 1337
    aggregation: AggregationParams = AggregationParams()  # recorded in ensemble.json: the served model uses it


class GateParams(_Section):
    """Thresholds a candidate must meet on the test split to be promoted."""

    min_auc: float = 0.90
    min_video_auc: float = 0.90
    max_eer: float = 0.15
    min_accuracy: float = 0.80


class EvaluateParams(_Section):
    """Evaluation of the ensemble on the test split."""

    gate: GateParams = GateParams()
    threshold: Literal["val_eer", "fixed"] = "val_eer"  # decision threshold: EER point on validation
    fixed_threshold: float = 0.5
    # Perturbations of the test crops the ensemble is re-scored on (see dfd/evaluation/robustness.py).
    robustness: list[str] = Field(default_factory=lambda: ["jpeg_50", "gauss_blur", "downscale_50", "gauss_noise"])
    robustness_max_crops: int = Field(2000, ge=1)  # a sample of the test crops keeps the stage minutes long
    drift_report: bool = True  # Evidently data-drift report, validation (reference) vs test (current)


class RegistryParams(_Section):
    """The MLflow model registry entry."""

    model_name: str = "deepfake-ensemble"
    alias: str = "production"  # moved only when the gate passes


class MlflowParams(_Section):
    """Tracking; the environment's MLFLOW_TRACKING_URI wins over the value here."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "deepfake-detection"
    # A tracking server that dies mid-run must fail the run in seconds: MLflow's own defaults (7 retries with
    # exponential backoff, 120 s timeouts) hang it for 13+ minutes. The environment's MLFLOW_HTTP_REQUEST_* win.
    http_max_retries: int = Field(2, ge=0)
    http_timeout_s: int = Field(10, ge=1)


class AlertParams(_Section):
    """Where gate failures are reported; off unless configured. Credentials come from the environment."""

    email_to: list[str] = Field(default_factory=list)
    smtp_host: str | None = None
    smtp_port: int = 25
    slack_webhook_env: str = "DFD_SLACK_WEBHOOK"  # name of the env var holding the webhook URL


class StorageParams(_Section):
    """S3 (AWS or an S3-compatible server such as MinIO) through boto3; credentials only from the environment."""

    # None: AWS itself, or the endpoint in $DFD_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL (the environment wins).
    endpoint_url: str | None = None
    region: str = "us-east-1"
    # Bounded retries and short timeouts: an unreachable endpoint must fail in seconds, not hang a weekly run.
    max_attempts: int = Field(3, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)


class Params(_Section):
    """The whole `params.yaml`."""

    data: DataParams = DataParams()
    demo_data: DemoDataParams = DemoDataParams()
    ingest: IngestParams = IngestParams()
    faces: FacesParams = FacesParams()
    models: dict[str, ModelParams] = Field(
        # The papers' input sizes; EfficientNet-B4 at 224 as the seed project did (380 is the DFDC winner's).
        default_factory=lambda: {"mesonet": ModelParams(input_size=256), "xception": ModelParams(input_size=299),
                                 "efficientnet": ModelParams(input_size=224), "f3net": ModelParams(input_size=299)}
    )
    train: TrainParams = TrainParams()
    ensemble: EnsembleParams = EnsembleParams()
    evaluate: EvaluateParams = EvaluateParams()
    registry: RegistryParams = RegistryParams()
    mlflow: MlflowParams = MlflowParams()
    alerts: AlertParams = AlertParams()
    storage: StorageParams = StorageParams()
    artifacts: str = "artifacts"  # models/, ensemble/, reports/ are written under it

    def digest(self) -> str:
        """A short stable hash of the resolved params, for provenance tags."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` into `base` recursively; lists and scalars are replaced, not merged."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, flag: str = "--params") -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}", f"pass an existing file with {flag}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None and flag == "--params":
        # Refused rather than read as "all defaults": an empty main file is almost always a mistake (a truncated
        # copy, a wrong path), and the defaults are GPU-sized (four full models, hours of training).
        raise ConfigError(f"params file {path} is empty (the defaults are GPU-sized)",
                          "copy the project's params.yaml, or write `{}` in it to mean all defaults on purpose")
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _file_holding(loc: tuple[Any, ...], layers: list[tuple[Path, dict[str, Any]]]) -> str:
    """The last file that sets the key at `loc` (the one whose value won the merge)."""
    for path, data in reversed(layers):
        node: Any = data
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return str(path)
    return "defaults"


def _format_validation_error(exc: ValidationError, layers: list[tuple[Path, dict[str, Any]]]) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = _file_holding(err["loc"], layers)
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key '{key}'")
        else:
            problems.append(f"{where}: '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


def load_params(path: str | Path = "params.yaml", overrides: list[str | Path] | None = None) -> Params:
    """Load, merge and validate the params file and its overrides.

    Args:
        path: The main params file.
        overrides: Files merged on top, in order; the `DFD_PARAMS_OVERRIDE` env var adds more after these.

    Returns:
        The validated, frozen params.

    Raises:
        ConfigError: Naming the file and the key when a file is missing, malformed, or holds an unknown key
            or a wrong type.
    """
    files = [(Path(path), "--params")]
    files += [(Path(p), "--override") for p in overrides or []]
    files += [(Path(p), f"${OVERRIDE_ENV}") for p in os.environ.get(OVERRIDE_ENV, "").split(os.pathsep) if p]
    layers = [(f, _read_yaml(f, flag)) for f, flag in files]
    merged: dict[str, Any] = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, layers), "fix it, or see `dfd config --schema`") from None


def json_schema() -> dict[str, Any]:
    """The JSON schema of `params.yaml`."""
    return Params.model_json_schema()
