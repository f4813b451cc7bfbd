"""Loading the registered ensemble by URI, with what it is: name, version, alias and lineage tags.

`models:/name@alias` and `models:/name/version` resolve against the tracking store the pipeline uses
(`MLFLOW_TRACKING_URI`, else `mlflow.tracking_uri` in params, a relative sqlite path made absolute);
a local folder holding an `MLmodel` (what `dfd deploy-model` writes) loads without a registry, its identity and tags
from the deployment manifest beside it when there is one (`dfd serve --from` hands over a checked private copy).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfd.evaluation.model_card import SYNTHETIC_WARNING, TRAINING_DATA_TAG
from dfd.platform.config import Params
from dfd.platform.errors import DfdError
from dfd.platform.uris import safe_uri

# Registering downloads artifacts back once per file, each with a progress bar: noise in a CLI.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelNotFoundError(DfdError):
    """The model URI does not resolve to a loadable model."""


class PrecisionError(DfdError):
    """A reduced inference precision moves P(fake) further from the evaluated fp32 scores than allowed."""


@dataclass
class LoadedModel:
    """A loaded registered model: the pyfunc, its Python model (crops and media), and its identity."""

    uri: str
    pyfunc: Any
    python_model: Any  # DeepfakeEnsembleModel: `.predictor`, `.scorer`, `.spec`
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"
    precision_error: float = 0.0  # max |P(fake) - torch fp32 P(fake)| on the model's example crops
    engine: str = "torch"  # what runs the members: torch or onnxruntime (serve.engine)
    engine_fallback: str | None = None  # why it runs torch when onnxruntime was asked for (not installed)

    @property
    def warning(self) -> str | None:
        """What every answer must say about this model: set when it learnt from the synthetic demo faces."""
        return SYNTHETIC_WARNING if self.tags.get(TRAINING_DATA_TAG) == "synthetic" else None

    def info(self) -> dict[str, Any]:
        return {"uri": self.uri, "name": self.name, "version": self.version, "alias": self.alias, "tags": self.tags,
                "precision": self.precision, "precision_error": self.precision_error, "engine": self.engine,
                **({"engine_fallback": self.engine_fallback} if self.engine_fallback else {}),
                **({"warning": self.warning} if self.warning else {})}


def default_model_uri(params: Params) -> str:
    return f"models:/{params.registry.model_name}@{params.registry.alias}"


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve_version(uri: str, tracking_uri: str) -> tuple[str, str, str | None, dict[str, str]]:
    """(name, version, alias, version tags) that a `models:/` URI points at now.

    Raises:
        ModelNotFoundError: Unknown model, version or alias, or an unreachable store.
    """
    m = _MODELS_URI.match(uri)
    if not m:
        raise ModelNotFoundError(f"not a registry model URI: {uri!r}", "write models:/NAME@ALIAS or models:/NAME/N")
    name, alias, version = m["name"], m["alias"], m["version"]
    try:
        client = _client(tracking_uri)
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as exc:  # MLflow raises RestException, MlflowException, OperationalError ...
        raise ModelNotFoundError(f"model {uri} not found in {safe_uri(tracking_uri)} ({type(exc).__name__})",
                                 "run the pipeline (`dfd run`) or pass --model") from None
    return name, str(mv.version), alias, dict(mv.tags)


def load(uri: str, tracking_uri: str, precision: str = "fp32", max_precision_error: float = 0.02,
         engine: str = "torch") -> LoadedModel:
    """Load a model by registry URI (pinned to the version the alias points at now) or local folder.

    Args:
        uri: `models:/name@alias`, `models:/name/N` or a folder with an `MLmodel`.
        tracking_uri: The registry.
        precision: Inference precision (torch: fp32, bf16, fp16; onnxruntime: fp32, int8); anything but torch fp32
            is checked against torch fp32 on the model's example crops.
        max_precision_error: The largest allowed |P(fake) - torch fp32 P(fake)| on those crops.
        engine: What runs the members: torch, or onnxruntime over the version's ONNX files (torch, said once,
            where onnxruntime is not installed).

    Raises:
        ModelNotFoundError: Nothing loadable at `uri`.
        PrecisionError: The reduced precision moves P(fake) too far.
    """
    import mlflow.pyfunc

    from dfd.platform.tracking import fluent_uris

    name = version = alias = None
    tags: dict[str, str] = {}
    target = uri
    if uri.startswith("models:/"):
        name, version, alias, tags = resolve_version(uri, tracking_uri)
        target = f"models:/{name}/{version}"  # the version resolved once: the swap is decided by the poller only
    elif not (Path(uri) / "MLmodel").is_file():
        raise ModelNotFoundError(f"no MLflow model at {uri}", "pass models:/NAME@ALIAS or a folder with an MLmodel")
    else:
        name, version, alias, tags = _deployed_identity(Path(uri))
    # pyfunc.load_model reads the registry (and the run's artifacts) through the process-wide URIs: set for the
    # load only, so that they do not redirect later clients in this process (the server's poller, a caller's own).
    # Loaded on torch fp32 whatever engine the version was registered with: this loader switches after measuring.
    with fluent_uris(tracking_uri):
        model = mlflow.pyfunc.load_model(target, model_config=TORCH_FP32)
    loaded = LoadedModel(uri, model, model.unwrap_python_model(), name, version, alias, tags)
    if precision != "fp32" or engine != "torch":
        check_precision(loaded, precision, max_precision_error, engine)
    return loaded


def _deployed_identity(folder: Path) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """(name, version, None, tags) from the `dfd deploy-model` manifest in `folder`, as registered; all empty when
    there is none. The tags carry what every answer must say (the synthetic-data warning). No alias: a folder is a
    fixed version, never polled."""
    import json

    from dfd.serving.deploy_store import MANIFEST

    try:
        source = json.loads((folder / MANIFEST).read_text())["source"]
        tags = {str(k): str(v) for k, v in source.get("tags", {}).items()}
        return source.get("name"), source.get("version"), None, tags
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None, None, {}


#: The pyfunc's `model_config` for torch fp32 (what evaluation scored); see `DeepfakeEnsembleModel.load_context`.
TORCH_FP32 = {"engine": "torch", "precision": "fp32"}


def check_precision(model: LoadedModel, precision: str, max_error: float, engine: str = "torch") -> None:
    """Switch `model` to `engine` in `precision` after measuring what it costs on the model's example crops (real
    test crops) against torch fp32.

    Raises:
        PrecisionError: No example crops to measure on, a precision or ONNX files the version lacks, or an error
            above `max_error`.
    """
    import numpy as np

    from dfd.serving.onnx_engine import apply_engine

    predictor = model.python_model.predictor
    example = model.pyfunc.input_example
    what = f"{engine} {precision}"
    if example is None:
        raise PrecisionError(f"model {model.uri} has no example crops to check {what} scores against",
                             "serve it with serve.engine: torch and serve.precision: fp32")
    try:
        # A version logged before the engine existed runs its own older model code: no `artifacts` kept, no ONNX.
        fallback = apply_engine(predictor, engine, precision, getattr(model.python_model, "artifacts", {}))
    except ValueError as exc:
        raise PrecisionError(str(exc), "set serve.engine: torch and serve.precision: fp32") from None
    if fallback:
        model.engine_fallback = fallback
        return
    error = predictor.precision_error(np.asarray(example).astype(np.uint8))
    if error > max_error:
        predictor.set_engine("torch", "fp32")
        raise PrecisionError(f"{what} moves P(fake) by {error:.4f} on the example crops of {model.uri} "
                             f"(limit {max_error})", "serve on torch fp32, or raise serve.max_precision_error")
    model.precision, model.precision_error, model.engine = precision, error, engine
