"""The operations sections of `params.yaml`: tracking, alerts, schedule, task runner, S3 storage, serving.

Split from `dfd/platform/config.py` (the pipeline's stage sections and the loader) to keep each module small;
`config.py` imports these into the one `Params` schema, so `from dfd.platform.config import XParams` still works.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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


class StorageParams(_Section):
    """S3 (AWS or an S3-compatible server such as MinIO) through boto3; credentials only from the environment."""

    # None: AWS itself, or the endpoint in $DFD_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL (the environment wins).
    endpoint_url: str | None = None
    region: str = "us-east-1"
    # Bounded retries and short timeouts: an unreachable endpoint must fail in seconds, not hang a weekly run.
    max_attempts: int = Field(3, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)


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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    max_precision_error: float = Field(0.02, gt=0, le=1)
    # `POST /predict` with JSON {"paths": [...]}: files on the server's disk, only under these folders. Off when
    # empty: a client must not make the server read arbitrary files.
    path_roots: list[str] = Field(default_factory=list)
