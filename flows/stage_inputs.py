"""What each stage's outputs depend on, for the flow's stage cache: the deps, params and code of `dvc.yaml`.

Code is followed through imports (`dfd.platform.stage_cache.code_files`), so a stage module that starts using
another module needs no edit here; data and params deps mirror `dvc.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path

from dfd.platform.config import Params
from dfd.platform.layout import Layout
from dfd.platform.recipe_config import train_inputs
from dfd.platform.stage_cache import StageInputs
from tasks.ingest import all_real_only


def _dump(params: Params, *names: str) -> dict[str, object]:
    """Top-level sections by name (a section another branch adds or removes is simply present or absent)."""
    full = params.model_dump(mode="json")
    return {n: full[n] for n in names if n in full}


def ingest(params: Params, layout: Layout) -> StageInputs:
    # Whether every model trains on reals only decides whether a dataset without fakes is accepted.
    return StageInputs("ingest", {**_dump(params, "data", "ingest"), "train.seed": params.train.seed,
                                  "real_only": all_real_only(params)},
                       (layout.resolve(params.data.root),), ("tasks.ingest",))


def faces(params: Params, layout: Layout) -> StageInputs:
    # serve.track_max_gap: with faces.all_faces the index's tracks are the ones serving forms (tasks/faces.py).
    return StageInputs("faces", {**_dump(params, "faces"), "serve.track_max_gap": params.serve.track_max_gap},
                       (layout.resolve(params.data.root), layout.manifest),
                       ("tasks.faces",))


def train(params: Params, layout: Layout, model: str) -> StageInputs:
    # The params this model reads: `train:` under its recipe (a field its recipe sets, sbi's `augment`, is hidden).
    return StageInputs(f"train@{model}", train_inputs(params.train, params.models[model]),
                       (layout.workdir / "faces",), ("tasks.train", "flows.train_process"))


def _model_dirs(params: Params, layout: Layout) -> tuple[Path, ...]:
    return tuple(layout.model_dir(m) for m in params.models)


def ensemble(params: Params, layout: Layout) -> StageInputs:
    return StageInputs("ensemble", _dump(params, "ensemble"), _model_dirs(params, layout), ("tasks.ensemble",))


def evaluate(params: Params, layout: Layout) -> StageInputs:
    # Further evaluation datasets (cross-dataset) are inputs too: new files there must rerun evaluate.
    eval_roots = tuple(layout.resolve(d.root) for d in params.evaluate.datasets)
    # The served file rule is judged with the min_frames and tracks serving applies (dfd/evaluation/file_rules.py).
    serve = {f"serve.{k}": getattr(params.serve, k) for k in ("file_rule", "min_frames", "track_max_gap")}
    return StageInputs("evaluate", {**_dump(params, "evaluate"), **serve},
                       (layout.ensemble_dir, *_model_dirs(params, layout), layout.workdir / "faces", *eval_roots),
                       ("tasks.evaluate",), outs=tuple(layout.reports_dir / n for n in (
                           "metrics.json", "robustness.json", "cross_dataset.json", "plots", "evidently")))


def register(params: Params, layout: Layout, tracking_uri: str) -> StageInputs:
    # Not reports/gate.json: the register stage writes it once the gate moves there, and a stage's own output
    # must not be its input. The gate is a function of metrics.json, robustness.json and the gate params.
    reports = layout.reports_dir
    slice_ = {**_dump(params, "registry", "mlflow", "evaluate", "gate"), "tracking_uri": tracking_uri,
              "monitor.reference_max_samples": params.monitor.reference_max_samples,
              "serve.file_rule": params.serve.file_rule}  # the gate's served_rule row
    return StageInputs("register", slice_,
                       (reports / "metrics.json", reports / "robustness.json", layout.ensemble_dir,
                        *_model_dirs(params, layout), layout.faces_index),
                       ("tasks.register", "dfd.serving.pyfunc_model", "dfd.monitoring.reference"),
                       outs=(layout.registry_record,))


def last_registration(layout: Layout) -> str | None:
    """The MLflow run that registered the version in `artifacts/registry.json`, or None before the first."""
    try:
        return str(json.loads(layout.registry_record.read_text())["run_id"])
    except (OSError, ValueError, KeyError):
        return None
