"""evaluate: test metrics of the ensemble and its members, robustness and drift (the register stage gates on them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from dfd.evaluation.metrics import binary_metrics
from dfd.evaluation.robustness import get_perturbation
from dfd.evaluation.scorecard import test_scorecard
from dfd.platform.config import EvaluateParams, Params
from dfd.platform.errors import StageError
from dfd.platform.files import read_json, write_json
from dfd.platform.layout import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    """What the evaluate stage wrote (the register stage decides the gate on it: dfd/evaluation/gate.py)."""

    reports_dir: Path
    metrics: dict[str, Any]


def _image_stats(paths: list[Path]) -> pd.DataFrame:
    """Brightness, contrast, sharpness and saturation of crops: the inputs' side of the drift report."""
    rows = []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            rows.append({"brightness": np.nan, "contrast": np.nan, "sharpness": np.nan, "saturation": np.nan})
            continue
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        rows.append({"brightness": float(grey.mean()), "contrast": float(grey.std()),
                     "sharpness": float(cv2.Laplacian(grey, cv2.CV_64F).var()),
                     "saturation": float(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 1].mean())})
    return pd.DataFrame(rows)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, html: Path) -> dict[str, Any]:
    """An Evidently data-drift report (validation as reference, test as current); returns its summary."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    # A (nearly) constant column has no distribution to compare, and Evidently's histograms fail on it.
    spread = lambda col: min(np.nanmax(df[col]) - np.nanmin(df[col]) for df in (reference, current))  # noqa: E731
    columns = [c for c in reference.columns if reference[c].notna().any() and current[c].notna().any() and
               spread(c) > 1e-6]
    summary: dict[str, Any] = {"html": html.name, "columns": {},
                               "skipped_constant": sorted(set(reference.columns) - set(columns))}
    try:
        snapshot = Report([DataDriftPreset()]).run(current_data=current[columns], reference_data=reference[columns])
        snapshot.save_html(str(html))
    except Exception as exc:  # a report must not sink the evaluation it describes
        log.warning("Evidently drift report failed: %s", exc)
        html.write_text(f"<html><body><h1>Drift report unavailable</h1><p>{type(exc).__name__}: {exc}</p>"
                        "</body></html>")
        return {**summary, "error": f"{type(exc).__name__}: {exc}"}
    for metric in snapshot.dict()["metrics"]:
        name, value = metric["metric_name"], metric["value"]
        if name.startswith("DriftedColumnsCount"):
            summary["drifted_columns"] = float(value["count"])
            summary["drifted_share"] = float(value["share"])
        elif name.startswith("ValueDrift"):
            summary["columns"][metric["config"]["column"]] = float(value)
    return summary


def robustness(frames: pd.DataFrame, crops_root: Path, checkpoints: dict[str, Path], spec: dict[str, Any],
               names: list[str], max_crops: int, threshold: float, seed: int = 0) -> dict[str, Any]:
    """Re-score a sample of test crops under each perturbation and report the metrics and the AUC drop."""
    from dfd.serving.ensemble import EnsemblePredictor

    if not names:
        return {}
    sample = frames.sample(min(max_crops, len(frames)), random_state=seed) if len(frames) > max_crops else frames
    crops = []
    for c in sample["crop"]:
        bgr = cv2.imread(str(crops_root / c), cv2.IMREAD_COLOR)
        if bgr is None:
            raise StageError(f"face crop unreadable: {crops_root / c}", "rerun the faces stage")
        crops.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    images = np.stack(crops)
    labels = sample["label"].to_numpy()
    predictor = EnsemblePredictor.from_spec(spec, checkpoints)  # the fitted fusion and calibration, as served
    clean = binary_metrics(labels, predictor(images), threshold)
    out: dict[str, Any] = {"crops": len(images), "clean": clean, "perturbed": {}}
    for name in names:
        fn = get_perturbation(name)
        m = binary_metrics(labels, predictor(np.stack([fn(c) for c in images])), threshold)
        m["auc_drop"] = clean["auc"] - m["auc"]
        out["perturbed"][name] = m
    return out


def evaluate(cfg: EvaluateParams, ensemble_dir: Path, model_dirs: dict[str, Path], faces_index: Path,
             out_dir: Path) -> EvaluateResult:
    """Score the ensemble and each member on the test split, and write reports and plots.

    Args:
        cfg: Evaluation params.
        ensemble_dir: Holds ensemble.json and predictions.parquet.
        model_dirs: Each member's folder (best.pt).
        faces_index: The faces index (for crops, robustness and drift).
        out_dir: artifacts/reports.
    """
    spec_path, pred_path = ensemble_dir / "ensemble.json", ensemble_dir / "predictions.parquet"
    for p in (spec_path, pred_path):
        if not p.is_file():
            raise StageError(f"ensemble output not found: {p}", "run `dfd stage ensemble` first")
    spec = read_json(spec_path)
    preds = pd.read_parquet(pred_path)
    test = preds[preds["split"] == "test"]
    if test.empty or test["label"].nunique() < 2:
        raise StageError("the test split is empty or holds one class only", "add identities or raise ingest.test_share")
    threshold = spec["val_eer_threshold"] if cfg.threshold == "val_eer" else cfg.fixed_threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["sample_id", "dataset", "method"]  # per-dataset and per-method rows of the scorecard
    samples = pd.read_parquet(faces_index, columns=cols) if faces_index.is_file() else None
    card = test_scorecard(preds, spec, threshold, samples, out_dir / "plots")
    ensemble_metrics, members = card.pop("ensemble"), card.pop("members")
    bad_crops = sorted({b["path"] for d in model_dirs.values() if (d / "metrics.json").is_file()
                        for b in read_json(d / "metrics.json").get("bad_crops", [])})

    index = pd.read_parquet(faces_index)
    crops_root = faces_index.parent
    test_frames = test.merge(index[["sample_id", "frame", "crop"]], on=["sample_id", "frame"], how="left")
    checkpoints = {m: d / "best.pt" for m, d in model_dirs.items()}
    robust = robustness(test_frames, crops_root, checkpoints, spec, cfg.robustness, cfg.robustness_max_crops,
                        threshold)
    write_json(out_dir / "robustness.json", robust)

    drift: dict[str, Any] = {}
    if cfg.drift_report:
        val_frames = preds[preds["split"] == "val"].merge(index[["sample_id", "frame", "crop"]],
                                                          on=["sample_id", "frame"], how="left")
        cols = [*spec["members"], "prob"]
        ref = pd.concat([val_frames[cols].reset_index(drop=True),
                         _image_stats([crops_root / c for c in val_frames["crop"]])], axis=1)
        cur = pd.concat([test_frames[cols].reset_index(drop=True),
                         _image_stats([crops_root / c for c in test_frames["crop"]])], axis=1)
        drift = drift_report(ref, cur, out_dir / "drift_report.html")

    metrics = {"ensemble": ensemble_metrics, "members": members, "threshold": threshold, **card,
               "bad_crops": bad_crops,  # unreadable val/test crops the members excluded (not scored)
               "robustness": {k: v["auc"] for k, v in robust.get("perturbed", {}).items()}, "drift": drift}
    write_json(out_dir / "metrics.json", metrics)
    return EvaluateResult(out_dir, metrics)


def run(params: Params, layout: Layout) -> EvaluateResult:
    """The stage as `dfd stage evaluate` and the flow call it."""
    return evaluate(params.evaluate, layout.ensemble_dir, {m: layout.model_dir(m) for m in params.models},
                    layout.faces_index, layout.reports_dir)
