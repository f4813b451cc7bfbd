"""ensemble: fuse the models' validation predictions with weights found by an Optuna study."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from dfd.evaluation.calibration import calibrate, fit_calibration
from dfd.evaluation.metrics import binary_metrics, eer
from dfd.platform.config import EnsembleParams, Params
from dfd.platform.errors import StageError
from dfd.platform.files import write_json
from dfd.platform.layout import Layout

TrialCallback = Callable[[int, dict[str, float], dict[str, float]], None]


@dataclass(frozen=True)
class EnsembleResult:
    """What the ensemble stage wrote."""

    spec: Path
    predictions: Path
    weights: dict[str, float]
    val_metrics: dict[str, float]


def load_predictions(paths: dict[str, Path]) -> pd.DataFrame:
    """One wide frame: sample_id, frame, split, label, and one probability column per model."""
    wide: pd.DataFrame | None = None
    for name, path in paths.items():
        if not path.is_file():
            raise StageError(f"predictions of model '{name}' not found: {path}",
                             f"run `dfd stage train --model {name}`")
        df = pd.read_parquet(path)[["sample_id", "frame", "split", "label", "prob"]].rename(columns={"prob": name})
        wide = df if wide is None else wide.merge(df, on=["sample_id", "frame", "split", "label"], how="inner")
    if wide is None or wide.empty:
        raise StageError("no predictions to ensemble", "train at least one model")
    return wide


def fuse(wide: pd.DataFrame, weights: dict[str, float], calibration: dict[str, list[float]]) -> np.ndarray:
    """Weighted average of the members' calibrated probabilities (weights need not sum to one)."""
    total = sum(weights.values())
    return sum(calibrate(wide[m].to_numpy(), calibration[m]) * (w / total)  # type: ignore[return-value]
               for m, w in weights.items())


def _score(objective: str, labels: np.ndarray, probs: np.ndarray) -> float:
    m = binary_metrics(labels, probs)
    if objective == "log_loss":
        return -m["log_loss"]
    # AUC saturates (many weightings rank a small validation set perfectly): log loss breaks the ties.
    return m["auc"] - 1e-3 * m["log_loss"]


def search_weights(wide: pd.DataFrame, models: list[str], cfg: EnsembleParams, calibration: dict[str, list[float]],
                   on_trial: TrialCallback | None = None) -> tuple[dict[str, float], optuna.Study]:
    """Find ensemble weights maximising the objective on validation frames with a seeded TPE study.

    The first trials are the plain average and each member alone, so the result is never worse on validation
    than the best single model or the average.
    """
    val = wide[wide["split"] == "val"]
    labels = val["label"].to_numpy()

    def objective(trial: optuna.Trial) -> float:
        w = {m: trial.suggest_float(m, 0.0, 1.0) for m in models}
        if sum(w.values()) <= 1e-9:
            return float("-inf")
        value = _score(cfg.objective, labels, fuse(val, w, calibration))
        if on_trial:
            on_trial(trial.number, w, {cfg.objective: abs(value)})
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.enqueue_trial({m: 1.0 for m in models})
    for solo in models:
        study.enqueue_trial({m: 1.0 if m == solo else 0.0 for m in models})
    study.optimize(objective, n_trials=cfg.trials, show_progress_bar=False)
    best = study.best_params
    total = sum(best.values())
    return {m: best[m] / total for m in models}, study


def build_ensemble(cfg: EnsembleParams, prediction_paths: dict[str, Path], out_dir: Path,
                   on_trial: TrialCallback | None = None) -> EnsembleResult:
    """Fit ensemble weights on validation predictions and write `ensemble.json` and `predictions.parquet`.

    Args:
        cfg: Ensemble params.
        prediction_paths: Each model's `predictions.parquet`.
        out_dir: The ensemble's output folder.
        on_trial: Called with (trial number, weights, objective value) for each Optuna trial.
    """
    models = sorted(prediction_paths)
    wide = load_predictions(prediction_paths)
    val_rows = wide[wide["split"] == "val"]
    if val_rows["label"].nunique() < 2:
        raise StageError("the validation split holds one class only; the ensemble cannot be fitted",
                         "add identities or raise ingest.val_share")
    calibration = fit_calibration(val_rows, models)
    weights, study = search_weights(wide, models, cfg, calibration, on_trial)
    wide["prob"] = fuse(wide, weights, calibration)
    val = wide[wide["split"] == "val"]
    val_metrics = binary_metrics(val["label"].to_numpy(), val["prob"].to_numpy())
    _, val_eer_threshold = eer(val["label"].to_numpy(), val["prob"].to_numpy())
    per_model: dict[str, Any] = {m: binary_metrics(val["label"].to_numpy(), val[m].to_numpy()) for m in models}
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / "predictions.parquet"
    wide.to_parquet(pred_path, index=False)
    spec = {"method": cfg.method, "members": models, "weights": weights, "calibration": calibration,
            "objective": cfg.objective,
            "trials": len(study.trials), "best_value": study.best_value, "val_eer_threshold": val_eer_threshold,
            "val_metrics": val_metrics, "val_metrics_per_model": per_model}
    spec_path = write_json(out_dir / "ensemble.json", spec)
    return EnsembleResult(spec_path, pred_path, weights, val_metrics)


def run(params: Params, layout: Layout, on_trial: TrialCallback | None = None) -> EnsembleResult:
    """The stage as `dfd stage ensemble` and the flow call it."""
    paths = {m: layout.model_dir(m) / "predictions.parquet" for m in params.models}
    return build_ensemble(params.ensemble, paths, layout.ensemble_dir, on_trial)
