"""register: log the ensemble as an MLflow pyfunc model, register a version, move the alias only on a pass."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from dfd.data.provenance import run_lineage
from dfd.platform.config import Params, RegistryParams
from dfd.platform.errors import StageError
from dfd.platform.files import read_json, write_json
from dfd.platform.layout import Layout
from dfd.platform.tracking import Tracker

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_CODE = PROJECT_ROOT / "dfd" / "serving" / "pyfunc_model.py"  # the served model, logged as code (see that file)
# What the served model imports, pinned to this environment's versions.
SERVING_PACKAGES = ("torch", "timm", "albumentations", "opencv-python-headless", "numpy", "pandas", "pydantic",
                    "pyyaml", "scikit-learn", "mlflow")


@dataclass(frozen=True)
class RegisterResult:
    """The registered version and whether it was promoted."""

    model_name: str
    version: str
    promoted: bool
    alias: str
    record: Path
    run_id: str


def _requirements() -> list[str]:
    reqs = []
    for pkg in SERVING_PACKAGES:
        try:
            reqs.append(f"{pkg}=={importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _input_example(faces_index: Path, n: int = 2) -> np.ndarray:
    index = pd.read_parquet(faces_index)
    rows = index[index["split"] == "test"].head(n)
    crops = [cv2.cvtColor(cv2.imread(str(faces_index.parent / c)), cv2.COLOR_BGR2RGB) for c in rows["crop"]]
    return np.stack(crops).astype(np.uint8)


def register(cfg: RegistryParams, reports_dir: Path, ensemble_dir: Path, model_dirs: dict[str, Path],
             faces_index: Path, tracker: Tracker, run_id: str, tags: dict[str, str],
             record_path: Path) -> RegisterResult:
    """Register the ensemble in the MLflow model registry.

    Args:
        cfg: Registered model name and alias.
        reports_dir: Holds gate.json and metrics.json from evaluate.
        ensemble_dir: Holds ensemble.json.
        model_dirs: Each member's folder (best.pt).
        faces_index: For the input example.
        tracker: The MLflow service.
        run_id: The run the model is logged in.
        tags: Provenance (git commit, DVC data hash, params hash) set on the model version.
        record_path: Where `registry.json` goes.
    """
    gate_path, spec_path = reports_dir / "gate.json", ensemble_dir / "ensemble.json"
    for p in (gate_path, spec_path):
        if not p.is_file():
            raise StageError(f"not found: {p}", "run the ensemble and evaluate stages first")
    gate, spec = read_json(gate_path), read_json(spec_path)
    artifacts = {"ensemble": str(spec_path)}
    for m in spec["members"]:
        ckpt = model_dirs[m] / "best.pt"
        if not ckpt.is_file():
            raise StageError(f"checkpoint of member '{m}' not found: {ckpt}", f"run `dfd stage train --model {m}`")
        artifacts[f"member_{m}"] = str(ckpt)
    version = tracker.log_pyfunc_model(
        run_id, MODEL_CODE, artifacts, _input_example(faces_index), _requirements(),
        [str(PROJECT_ROOT / "models"), str(PROJECT_ROOT / "dfd")], cfg.model_name,
        ((np.dtype(np.uint8), (-1, -1, -1, 3)), (np.dtype(np.float32), (-1,))))
    metrics = read_json(reports_dir / "metrics.json")["ensemble"] if (reports_dir / "metrics.json").is_file() else {}
    version_tags: dict[str, Any] = {**tags, "gate_passed": str(gate["passed"]).lower(),
                                    "gate_failed_checks": ",".join(gate["failed"]) or "none",
                                    "members": ",".join(spec["members"]),
                                    **{f"test_{k}": f"{metrics[k]:.4f}" for k in ("auc", "video_auc", "eer")
                                       if k in metrics}}
    tracker.set_version_tags(cfg.model_name, version, version_tags)
    if gate["passed"]:
        tracker.set_alias(cfg.model_name, cfg.alias, version)
    record = {"model_name": cfg.model_name, "version": version, "promoted": bool(gate["passed"]), "alias": cfg.alias,
              "model_uri": f"models:/{cfg.model_name}/{version}", "run_id": run_id, "tags": version_tags,
              "tracking_uri": tracker.tracking_uri}
    write_json(record_path, record)
    return RegisterResult(cfg.model_name, version, bool(gate["passed"]), cfg.alias, record_path, run_id)


def check_inputs(params: Params, layout: Layout) -> None:
    """Fail with one line, before an MLflow run is opened, when an upstream output is missing (no empty runs)."""
    # metrics.json, not gate.json: evaluate writes the metrics whichever stage decides the gate.
    needed = [(layout.reports_dir / "metrics.json", "evaluate"), (layout.ensemble_dir / "ensemble.json", "ensemble"),
              (layout.faces_index, "faces"), (layout.ingest_report, "ingest")]
    for path, stage in needed:
        if not path.is_file():
            raise StageError(f"not found: {path}", f"run the {stage} stage first (`dfd stage {stage}`), or `dfd run`")


def run(params: Params, layout: Layout, tracker: Tracker, parent_id: str | None = None) -> RegisterResult:
    """The stage as `dfd stage register` (its own run) and the flow (a run nested under `parent_id`) call it.

    Both paths tag the run and the version with the same lineage, computed by one function from the same files.
    """
    check_inputs(params, layout)
    tags = run_lineage(params, layout.ingest_report, layout.root)
    with tracker.run("register" if parent_id else "register (dvc)", parent_id, tags) as rid:
        metrics_path = layout.reports_dir / "metrics.json"
        if metrics_path.is_file():
            tracker.log_metrics(rid, {"test": read_json(metrics_path)["ensemble"]})
        return register(params.registry, layout.reports_dir, layout.ensemble_dir,
                        {m: layout.model_dir(m) for m in params.models}, layout.faces_index, tracker, rid, tags,
                        layout.registry_record)
