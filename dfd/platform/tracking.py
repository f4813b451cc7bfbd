"""The MLflow service: one small object the flow and the stages' wiring talk to; nothing is configured at import.

It uses `MlflowClient` with explicit run ids, so parallel training tasks (threads) log to their own nested runs
without MLflow's thread-local "active run" getting in the way, and a lock serialises writes to the sqlite store.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from dfd.platform.audit import AuditLog, actor, audit_log
from dfd.platform.config import Params
from dfd.platform.errors import DfdError, TrackingError
from dfd.platform.uris import safe_uri, strip_credentials

# Registering a model downloads its artifacts back once per file, each with a progress bar: noise in a pipeline log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

PARENT_TAG = "mlflow.parentRunId"
NAME_TAG = "mlflow.runName"


def resolve_tracking_uri(params: Params, root: Path) -> str:
    """MLFLOW_TRACKING_URI from the environment, else params; a relative sqlite path is made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds with a clear message, instead of MLflow's minutes of retries, when the server is down."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DfdError(f"MLflow tracking server unreachable at {uri} ({reason})",
                       "start it with mlflow/start_server.sh, or set MLFLOW_TRACKING_URI") from None


def bound_http_retries(params: Params) -> None:
    """Bound MLflow's HTTP retries and timeouts from params (`mlflow.http_*`); values set in the environment win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(params.mlflow.http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(params.mlflow.http_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # 1 s, 2 s, ... between tries, not 2 s, 4 s, ...


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` is MLflow giving up on an HTTP server (connection refused, reset, timed out, retries spent)."""
    text = str(exc)
    return "API request to" in text and ("failed with" in text or "Max retries" in text)


class _GuardedClient:
    """An MlflowClient whose calls turn "the server stopped answering" into one TrackingError line."""

    def __init__(self, client: Any, uri: str) -> None:
        self._client, self._uri = client, uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                if _unreachable(exc):
                    raise TrackingError(f"MLflow tracking server at {self._uri} stopped answering ({name}: "
                                        f"{str(exc).splitlines()[0][:200]})",
                                        "restart it (mlflow/start_server.sh) and rerun: finished stages are kept"
                                        ) from None
                raise

        return call


@contextmanager
def fluent_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide (fluent) tracking and registry URIs at `uri` for the body only.

    Logging and loading models have only a fluent API; left set, the URIs would silently redirect every later
    `MlflowClient()` without explicit URIs in this process (tests and long-lived callers alike).
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


class Tracker:
    """Runs, params, metrics, artifacts and the registry, for one tracking URI and experiment.

    Args:
        tracking_uri: An MLflow tracking URI (sqlite, http(s), ...).
        experiment: Experiment name, created on first use.
        artifact_root: Artifact location for a new experiment on a local store; None lets the server decide.
    """

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        if tracking_uri.startswith(("http://", "https://")):
            _check_server(tracking_uri)
        self.client = _GuardedClient(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri), tracking_uri)
        self._lock = threading.Lock()
        self.experiment_id = self._experiment(experiment, artifact_root)
        self._init_args = (tracking_uri, experiment, artifact_root)
        self.audit: AuditLog | None = None  # where alias moves are recorded (`from_params` sets it)

    def __reduce__(self) -> tuple[Any, ...]:
        # Distributed task runners (Dask, Ray) ship tasks' arguments to other processes: rebuild the client there
        # (a lock and an HTTP session do not pickle).
        return (type(self), self._init_args, {"audit": self.audit})

    @classmethod
    def from_params(cls, params: Params, root: Path) -> Tracker:
        bound_http_retries(params)
        uri = resolve_tracking_uri(params, root)
        local = uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri
        tracker = cls(uri, params.mlflow.experiment, root / "mlruns" if local else None)
        tracker.audit = audit_log(params.registry.audit_log, root)
        return tracker

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            location = artifact_root.resolve().as_uri() if artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except Exception:
                # A create whose answer timed out on a busy server landed there all the same, and the client's
                # retry was refused as a duplicate (or another process created it first): it exists now.
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                return exp.experiment_id
        except Exception as exc:  # MLflow raises several types for an unreachable store
            raise DfdError(f"MLflow tracking store unreachable at {safe_uri(self.tracking_uri)}: {type(exc).__name__}",
                           "start the server (mlflow/start_server.sh) or set MLFLOW_TRACKING_URI") from None

    def start_run(self, name: str, parent_id: str | None = None, tags: dict[str, str] | None = None) -> str:
        """Create a run (nested under `parent_id` when given) and return its id."""
        all_tags = {NAME_TAG: name, **{k: strip_credentials(str(v)) for k, v in (tags or {}).items()}}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        with self._lock:
            return self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        with self._lock:
            self.client.set_terminated(run_id, status)

    @contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[str]:
        """A run that ends FINISHED, or FAILED when the body raises."""
        run_id = self.start_run(name, parent_id, tags)
        try:
            yield run_id
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id)

    @contextmanager
    def system_metrics(self, run_id: str, interval_s: float = 10.0) -> Iterator[None]:
        """Sample CPU, memory, disk, network (and GPU with pynvml) into `run_id` while the body runs.

        MLflow's monitor logs from its own thread and swallows its own errors, so a busy store never fails a run.
        """
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # A URI in params (a tracking or S3 URI with a user:password in it) is stored without its credentials.
        items = [Param(k, strip_credentials(str(v))[:6000]) for k, v in flatten(params).items()]
        with self._lock:
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log every numeric metric; NaN and infinities are logged as they are (MLflow stores them), and a None
        (a metric that could not be computed) as NaN, so that a failed metric is visible, never silently absent."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, math.nan if v is None else float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if v is None or (isinstance(v, int | float) and not isinstance(v, bool))]
        with self._lock:
            for i in range(0, len(items), 500):
                self.client.log_batch(run_id, metrics=items[i:i + 500])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        with self._lock:
            for k, v in tags.items():
                self.client.set_tag(run_id, k, strip_credentials(str(v)))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        with self._lock:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path)

    def download_artifacts(self, run_id: str, path: str, dst: Path) -> Path:
        """Copy a run's artifact (file or folder) into `dst`; returns the local path."""
        dst.mkdir(parents=True, exist_ok=True)
        with self._lock:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def log_pyfunc_model(self, run_id: str, python_model: Path, artifacts: dict[str, str], input_example: Any,
                         pip_requirements: list[str], code_paths: list[str], registered_model_name: str,
                         model_config: dict[str, Any] | None = None) -> str:
        """Log a models-from-code pyfunc into `run_id`, register it, and return the new version.

        Args:
            run_id: The run the model belongs to.
            python_model: The file MLflow executes at load time (it calls `mlflow.models.set_model`).
            artifacts: Name to local file, copied beside the model.
            input_example: Stored with the model and used to check that it loads and predicts.
            pip_requirements: The served model's pinned requirements.
            code_paths: Folders shipped with the model so that it imports the project's code.
            registered_model_name: Registry name; a new version is created.
            model_config: What `load_context` reads as `context.model_config` (the engine to run), overridable
                when loading.

        The model is logged without a signature (`signature=False` also stops MLflow inferring one from the
        example): it takes crops (a tensor) or media (a DataFrame of paths or bytes), a union MLflow's schemas
        cannot state, and a crops-only signature made `PyFuncModel.predict` refuse media. The model checks its
        own input and says what it expected.
        """
        import mlflow

        # Logging a model has only a fluent API: point it at this store and this run, under the lock.
        with self._lock, fluent_uris(self.tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="ensemble", python_model=str(python_model), artifacts=artifacts, signature=False,
                input_example=input_example, pip_requirements=pip_requirements, code_paths=code_paths,
                registered_model_name=registered_model_name, model_config=model_config)
        return str(info.registered_model_version)

    def set_version_tags(self, model_name: str, version: str, tags: dict[str, Any]) -> None:
        """Tag one registered model version."""
        with self._lock:
            for k, v in tags.items():
                self.client.set_model_version_tag(model_name, version, k, str(v))

    def set_version_description(self, model_name: str, version: str, text: str) -> None:
        """The version's Markdown description (what the MLflow UI shows on the version's page)."""
        with self._lock:
            self.client.update_model_version(model_name, version, description=text)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point `alias` at `version`, and mirror it as a registered-model tag (what the registry list shows).

        The move is recorded: `<alias>_moved` on the model says from which version, by whom and when, and the audit
        log (`registry.audit_log`), when there is one, gets a line.
        """
        from mlflow.exceptions import MlflowException

        with self._lock:
            try:
                before: str | None = str(self.client.get_model_version_by_alias(model_name, alias).version)
            except MlflowException:  # no such alias yet
                before = None
            self.client.set_registered_model_alias(model_name, alias, version)
            self.client.set_registered_model_tag(model_name, f"{alias}_version", version)
            if before == str(version):
                return
            by, at = actor(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.client.set_registered_model_tag(model_name, f"{alias}_moved",
                                                 f"v{before} -> v{version} by {by} at {at}" if before
                                                 else f"-> v{version} by {by} at {at}")
        if self.audit is not None:
            self.audit.append("alias", model=model_name, alias=alias, version=str(version), previous=before,
                              registry=safe_uri(self.tracking_uri))

    def log_dataset(self, run_id: str, manifest: Path, name: str, digest: str, source: str,
                    context: str = "training") -> None:
        """Log the manifest as the run's dataset input, with the DVC hash of the data as its digest."""
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        df = pd.read_parquet(manifest)
        ds = mlflow.data.from_pandas(df, source=source, name=name, digest=digest[:36])
        entity = ds._to_mlflow_entity()
        with self._lock:
            self.client.log_inputs(run_id, datasets=[DatasetInput(entity, [InputTag("mlflow.data.context", context)])])

    # --- The model registry: aliases, version tags, promotion, loading (every MLflow registry call goes here) ---

    def get_version(self, model_name: str, version: str) -> dict[str, Any]:
        """A registered version as `{version, run_id, tags, aliases, source}`; DfdError when it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(model_name, str(version))
        except MlflowException:
            raise DfdError(f"model version not found: {model_name} v{version}",
                           f"list versions in the MLflow UI ({safe_uri(self.tracking_uri)})") from None
        return {"version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags or {}),
                "aliases": list(mv.aliases or []), "source": mv.source}

    def version_by_alias(self, model_name: str, alias: str) -> dict[str, Any] | None:
        """The version `alias` points at (as `get_version` returns it), or None when the alias or model is unset."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException:  # RESOURCE_DOES_NOT_EXIST: no such model, or no such alias
            return None
        return self.get_version(model_name, str(mv.version))

    def delete_alias(self, model_name: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        with self._lock:
            for delete in (lambda: self.client.delete_registered_model_alias(model_name, alias),
                           lambda: self.client.delete_registered_model_tag(model_name, f"{alias}_version")):
                with suppress(MlflowException):  # already absent
                    delete()

    @contextmanager
    def promotion_lock(self, model_name: str, timeout_s: float = 120.0) -> Iterator[None]:
        """Serialise alias moves (promotion, rollback) of one model across threads and processes.

        On a local store (sqlite, file) a lock file beside the store does it. A remote server offers no lock, so there
        the lock only covers this machine and `promote` re-reads the alias after moving it to detect a concurrent
        move (MLflow moves an alias in one call, so `production` is never on two versions either way).
        """
        from filelock import FileLock, Timeout

        path = self._lock_path(model_name)
        if path is None:
            with _PROCESS_PROMOTION_LOCK:
                yield
            return
        try:
            with FileLock(str(path), timeout=timeout_s):
                yield
        except Timeout:
            raise DfdError(f"another promotion of {model_name} holds {path} for over {timeout_s:.0f} s",
                           "wait for it, or delete the lock file if its process is gone") from None

    def _lock_path(self, model_name: str) -> Path | None:
        uri = self.tracking_uri
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            return db.with_name(f"{db.name}.{model_name}.promote.lock")
        if uri.startswith("file:") or "://" not in uri:
            root = Path(uri[len("file://"):] if uri.startswith("file://") else uri.removeprefix("file:"))
            return root / f".{model_name}.promote.lock"
        return None

    def promote(self, model_name: str, version: str, alias: str, previous_alias: str,
                archive_tags: dict[str, str]) -> str | None:
        """Move `alias` to `version` in one call; the version it left gets `previous_alias` and `archive_tags`.

        Returns the version that held `alias` before (None if none). Raises DfdError when, after the move, another
        writer (outside this lock: a second machine against a remote server) has moved the alias elsewhere.
        """
        with self.promotion_lock(model_name):
            current = self.version_by_alias(model_name, alias)
            old = current["version"] if current else None
            if between_read_and_write is not None:
                between_read_and_write(model_name, str(version), old)
            if old == str(version):
                return None
            self.set_alias(model_name, alias, version)
            if old is not None:
                self.set_alias(model_name, previous_alias, old)
                self.set_version_tags(model_name, old, archive_tags)
            now = self.version_by_alias(model_name, alias)
            if now is None or now["version"] != str(version):
                raise DfdError(f"'{alias}' of {model_name} was moved to v{now and now['version']} while v{version} "
                               "was being promoted", "check the registry and rerun the register stage")
            return old

    def load_pyfunc(self, model_uri: str) -> Any:
        """Load a logged or registered pyfunc model (`models:/name/3`, `models:/name@alias`, `runs:/id/ensemble`)."""
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        try:
            with self._lock, fluent_uris(self.tracking_uri):
                return mlflow.pyfunc.load_model(model_uri)
        except MlflowException as exc:
            raise DfdError(f"cannot load model {model_uri}: {exc.message.splitlines()[0]}",
                           f"check the URI against the registry at {safe_uri(self.tracking_uri)}") from None


# Promotions against a remote server from threads of one process (the lock file covers local stores).
_PROCESS_PROMOTION_LOCK = threading.Lock()

# A test hook, None in production: `promote` calls it with (model name, the version being promoted, the version the
# alias pointed at) after reading the alias and before moving it, inside the promotion lock. A test holds one
# promotion there while another starts, so the race it checks happens every time rather than by luck.
between_read_and_write: Callable[[str, str, str | None], None] | None = None
