"""ensemble: fuse the models' validation predictions (method by name), calibrate the fused score, cross-validate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfd.evaluation.attention import attention_verdict
from dfd.evaluation.calibration import apply_post_calibration, calibrate, fit_calibration, fit_post_calibration
from dfd.evaluation.fusion import (
    FitContext,
    TrialCallback,
    apply_fusion,
    cross_validate,
    fit_fusion,
    fit_post_on_oof,
    member_weights,
)
from dfd.evaluation.metrics import binary_metrics, eer
from dfd.evaluation.significance import identity_clusters, persons_of
from dfd.platform.config import EnsembleParams, Params
from dfd.platform.errors import StageError
from dfd.platform.files import write_json
from dfd.platform.layout import Layout

# One row per face crop: with faces.all_faces a frame has one crop per face, told apart by its track.
KEYS = ["sample_id", "frame", "track", "split", "label"]


@dataclass(frozen=True)
class EnsembleResult:
    """What the ensemble stage wrote."""

    spec: Path
    predictions: Path
    weights: dict[str, float]
    val_metrics: dict[str, float]
    cv: dict[str, float] = field(default_factory=dict)  # mean and std of the objective over identity-grouped folds


def load_predictions(paths: dict[str, Path]) -> tuple[pd.DataFrame, int]:
    """One wide frame (sample_id, frame, split, label, one probability column per model) and the number of rows
    that some members scored and others did not (an excluded unreadable crop): those are left out, not guessed."""
    wide: pd.DataFrame | None = None
    rows: set[tuple] = set()
    labels: dict[tuple, tuple[str, int]] = {}
    for name, path in paths.items():
        if not path.is_file():
            raise StageError(f"predictions of model '{name}' not found: {path}",
                             f"run `dfd stage train --model {name}`")
        df = pd.read_parquet(path)
        if "track" not in df:  # written before tracks were recorded: one crop per frame (the largest face)
            df = df.assign(track=0)
        df = df[[*KEYS, "prob"]].rename(columns={"prob": name})
        # Members are fused on the same rows with the same labels: a real-only member's SBI-made validation fakes
        # (dfd/training/real_only.py) must never meet another member's real labels for the same crop.
        for key, label in zip(df[KEYS[:4]].itertuples(index=False, name=None), df["label"], strict=True):
            first = labels.setdefault(key, (name, int(label)))
            if first[1] != int(label):
                raise StageError(f"members '{first[0]}' and '{name}' label sample {key[0]} (frame {key[1]}, "
                                 f"{key[3]}) differently: their {key[3]} fakes are not the same",
                                 "retrain both on the same faces index (a real-only member uses SBI fakes only "
                                 "when the split has no real fake)")
        rows |= set(df[KEYS].itertuples(index=False, name=None))
        wide = df if wide is None else wide.merge(df, on=KEYS, how="inner")
    if wide is None or wide.empty:
        raise StageError("no predictions to ensemble", "train at least one model")
    return wide, len(rows) - len(wide)


def _identities(frames: pd.DataFrame, faces_index: Path | None) -> np.ndarray:
    """Each row's identity cluster (`identity_clusters` over the persons of the faces index's samples, joined on
    sample_id): the CV's folds must not split a person's samples; a sample is its own cluster without persons."""
    sample_ids = frames["sample_id"].astype(str).tolist()
    if faces_index is None or not faces_index.is_file():
        return identity_clusters([[] for _ in sample_ids], sample_ids)
    import pyarrow.parquet as pq

    cols = [c for c in ("persons", "identity") if c in pq.read_schema(faces_index).names]
    ids = pd.read_parquet(faces_index, columns=["sample_id", *cols]).drop_duplicates("sample_id")
    joined = frames[["sample_id"]].astype(str).merge(ids, on="sample_id", how="left")
    return identity_clusters(persons_of(joined), sample_ids)


def fuse(wide: pd.DataFrame, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(fused score, final calibrated P(fake)) of the members' columns of `wide`, as `spec` (ensemble.json) says.

    `dfd.serving.ensemble.EnsemblePredictor` computes the same from crops.
    """
    members = spec["fusion"]["members"]
    X = np.column_stack([calibrate(wide[m].to_numpy(), spec["calibration"][m]) for m in members])
    fused = apply_fusion(spec["fusion"], X)
    return fused, apply_post_calibration(spec.get("post_calibration"), fused)


def _fit_post(method: str, oof_fused: np.ndarray | None, in_sample: np.ndarray, y: np.ndarray,
              cv: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The post-fusion calibration and what it was fitted on.

    On the identity-grouped out-of-fold fused scores when the CV produced them for both classes: a calibration fitted
    on scores of a fusion fitted on the same rows learns that fusion's in-sample confidence, not the served one's.
    In-sample (said so) only when there was no CV to draw on (a single validation identity cluster).
    """
    if oof_fused is not None:
        post, out_of_fold = fit_post_on_oof(method, oof_fused, in_sample, y)
        if out_of_fold:
            ok = np.isfinite(oof_fused)
            return post, (f"out-of-fold fused scores ({int(ok.sum())} of {len(y)} validation frames, {cv['folds']} "
                          "identity-grouped folds)")
    return fit_post_calibration(method, in_sample, y), "in-sample fused validation scores (no cross-validation)"


def build_ensemble(cfg: EnsembleParams, prediction_paths: dict[str, Path], out_dir: Path,
                   on_trial: TrialCallback | None = None, faces_index: Path | None = None,
                   study_db: Path | None = None) -> EnsembleResult:
    """Fit member calibration, fusion and post-fusion calibration on validation; write the spec and predictions.

    Args:
        cfg: Ensemble params.
        prediction_paths: Each model's `predictions.parquet`.
        out_dir: The ensemble's output folder (ensemble.json, predictions.parquet).
        on_trial: Called with (trial number, weights, objective value) for each new Optuna trial.
        faces_index: Where each sample's identity is read for the identity-grouped CV.
        study_db: The sqlite file of the resumable Optuna study (default: `out_dir/optuna.db`).
    """
    models = sorted(prediction_paths)
    wide, excluded = load_predictions(prediction_paths)
    val = wide[wide["split"] == "val"].reset_index(drop=True)
    y = val["label"].to_numpy()
    if len(np.unique(y)) < 2:
        raise StageError("the validation split holds one class only; the ensemble cannot be fitted",
                         "add identities or raise ingest.val_share")
    calibration = fit_calibration(val, models)
    X = np.column_stack([calibrate(val[m].to_numpy(), calibration[m]) for m in models])
    out_dir.mkdir(parents=True, exist_ok=True)
    study_db = (study_db or out_dir / "optuna.db").resolve()
    study_db.parent.mkdir(parents=True, exist_ok=True)
    ctx = FitContext(cfg, models, f"sqlite:///{study_db}", on_trial)
    groups = _identities(val, faces_index)
    method, choice = cfg.method, None
    cv = cross_validate(method, cfg.calibration, val[models].to_numpy(), y, groups, ctx)
    if method == "attention":  # served only when its CV beats the weighted average's (dfd/evaluation/attention.py)
        average_cv = cross_validate("weighted_average", cfg.calibration, val[models].to_numpy(), y, groups, ctx)
        keep, choice = attention_verdict(cv, average_cv, y, groups)
        if not keep:
            method, cv = "weighted_average", average_cv
    oof, oof_fused = cv.pop("oof", None), cv.pop("oof_fused", None)
    fusion = fit_fusion(method, X, y, ctx)
    post, post_fit = _fit_post(cfg.calibration, oof_fused, apply_fusion(fusion, X), y, cv)
    spec: dict[str, Any] = {"method": method, "members": models, "calibration": calibration, "fusion": fusion,
                            "weights": member_weights(fusion), "post_calibration": post,
                            "post_calibration_fit": post_fit, "aggregation": cfg.aggregation.model_dump(),
                            "objective": cfg.objective, "cv": cv,
                            # the served model marks files below it `uncertain` (dfd/evaluation/agreement.py)
                            "agreement_threshold": cfg.agreement_threshold}
    if choice is not None:
        spec["fusion_choice"] = choice
    wide["prob_fused"], wide["prob"] = fuse(wide, spec)
    val = wide[wide["split"] == "val"]
    val_metrics = binary_metrics(val["label"].to_numpy(), val["prob"].to_numpy())
    _, threshold = eer(val["label"].to_numpy(), val["prob"].to_numpy())
    if oof is not None and np.isfinite(oof).any():
        ok = np.isfinite(oof)
        cv["oof_metrics"] = binary_metrics(y[ok], oof[ok], threshold)
    spec.update({"val_eer_threshold": threshold, "threshold": threshold, "val_metrics": val_metrics,
                 "val_metrics_fused": binary_metrics(val["label"].to_numpy(), val["prob_fused"].to_numpy()),
                 "val_metrics_per_model": {m: binary_metrics(val["label"].to_numpy(), val[m].to_numpy())
                                           for m in models},
                 "excluded_rows": excluded,
                 # weighted_average keeps its study's summary at the top level, where earlier readers found it
                 **{k: fusion[k] for k in ("trials", "best_value") if k in fusion}})
    pred_path = out_dir / "predictions.parquet"
    wide.to_parquet(pred_path, index=False)
    spec_path = write_json(out_dir / "ensemble.json", spec)
    cv_summary = {k: cv[k] for k in ("mean", "std") if k in cv}
    return EnsembleResult(spec_path, pred_path, spec["weights"], val_metrics, cv_summary)


def run(params: Params, layout: Layout, on_trial: TrialCallback | None = None) -> EnsembleResult:
    """The stage as `dfd stage ensemble` and the flow call it."""
    paths = {m: layout.model_dir(m) / "predictions.parquet" for m in params.models}
    # Outside the ensemble folder: `dvc repro` deletes a stage's outs before it runs, the study must survive that.
    return build_ensemble(params.ensemble, paths, layout.ensemble_dir, on_trial, layout.faces_index,
                          layout.artifacts / "studies" / "ensemble.db")
