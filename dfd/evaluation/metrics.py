"""Detection metrics at frame and video level: AUC, AP, EER, accuracy, log loss, Brier score and ECE.

Scikit-learn computes what it has (AUC, AP, ROC for the EER, log loss, Brier); the expected calibration error is
Kumar et al.'s debiased L2-ECE (`dfd.evaluation.ece`) over `ECE_BINS` equal-width bins (`ece`) and equal-mass bins
(`ece_equal_mass`); the biased plug-in L1-ECE of earlier versions is kept beside them as `ece_plugin`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score, roc_curve

from dfd.evaluation.aggregate import video_scores
from dfd.evaluation.ece import ECE_BINS, bin_index, calibration_error
from dfd.platform.config import AggregationParams


def eer(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false positive and false negative rates meet."""
    fpr, tpr, thr = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2), float(min(thr[i], 1.0))


def reliability_bins(labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS,
                     strategy: str = "uniform") -> pd.DataFrame:
    """Per bin of P(fake): its edges, count, mean predicted P(fake) and observed share of fakes (empty bins kept).

    `uniform`: equal-width bins, bin b holds scores in [b/bins, (b+1)/bins) and the last also 1.0. `quantile`:
    equal-mass bins (edges at the scores' quantiles, as scikit-learn's `calibration_curve(strategy="quantile")`),
    which keep every bin populated when scores crowd near 0 and 1, where equal-width ECE hides miscalibration.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    idx = bin_index(scores, bins, strategy)  # the bins of the gate's ECE
    if strategy == "quantile" and len(scores):
        edges = np.quantile(scores, np.linspace(0, 1, bins + 1))
        lower, upper = edges[:-1], edges[1:]
    else:
        lower, upper = np.arange(bins) / bins, np.arange(1, bins + 1) / bins
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=scores, minlength=bins) / count
        frac = np.bincount(idx, weights=labels, minlength=bins) / count
    return pd.DataFrame({"lower": lower, "upper": upper, "count": count, "mean_score": conf, "fake_share": frac})


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS,
                               strategy: str = "uniform") -> float:
    """The plug-in L1-ECE: sum over bins of (share of frames in the bin) * |observed fake share - mean P(fake)|.

    Biased upward on small samples (see `dfd.evaluation.ece`): reported as `ece_plugin`, never judged.
    `strategy`: "uniform" (equal-width bins) or "quantile" (equal-mass bins), see `reliability_bins`.
    """
    if len(labels) == 0:
        return float("nan")
    r = reliability_bins(labels, scores, bins, strategy)
    used = r["count"] > 0
    return float((r.loc[used, "count"] / r["count"].sum() * (r.loc[used, "fake_share"] -
                                                             r.loc[used, "mean_score"]).abs()).sum())


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, AP, EER, accuracy at `threshold`, log loss, Brier score and ECE of probabilities `scores` (fake = 1).

    Ranking metrics and log loss are NaN when only one class is present, rather than an exception mid-pipeline.
    """
    labels = np.asarray(labels, dtype=int)
    raw = np.asarray(scores, dtype=float)  # ranking metrics on the scores as given: clipping would tie extremes
    scores = np.clip(raw, 1e-7, 1 - 1e-7)
    n = len(labels)
    out = {"n": float(n), "accuracy": float(((scores >= threshold) == labels).mean()) if n else float("nan"),
           "threshold": float(threshold),
           "brier": float(brier_score_loss(labels, scores, pos_label=1)) if n else float("nan"),
           "ece": calibration_error(labels, scores),  # debiased L2-ECE: what `max_ece` judges (per video)
           "ece_equal_mass": calibration_error(labels, scores, strategy="quantile"),
           "ece_plugin": expected_calibration_error(labels, scores)}
    if len(np.unique(labels)) < 2:
        return {**out, "auc": float("nan"), "ap": float("nan"), "eer": float("nan"), "log_loss": float("nan")}
    e, _ = eer(labels, raw)
    return {**out, "auc": float(roc_auc_score(labels, raw)), "ap": float(average_precision_score(labels, raw)),
            "eer": e, "log_loss": float(log_loss(labels, scores, labels=[0, 1]))}


def video_level(frames: pd.DataFrame, score_col: str = "prob") -> pd.DataFrame:
    """Average frame scores per sample (a video, or an image as a one-frame video)."""
    return frames.groupby("sample_id", as_index=False).agg(label=("label", "first"), **{score_col: (score_col, "mean")})


def frame_and_video_metrics(frames: pd.DataFrame, threshold: float, score_col: str = "prob",
                            aggregation: AggregationParams | None = None) -> dict[str, float]:
    """Frame-level metrics, and video-level ones prefixed `video_` (frames to videos by `aggregation`, default
    the mean: `ensemble.aggregation`, the rule the served model uses)."""
    frame = binary_metrics(frames["label"].to_numpy(), frames[score_col].to_numpy(), threshold)
    vids = video_scores(frames, aggregation or AggregationParams(), score_col)
    video = binary_metrics(vids["label"].to_numpy(), vids[score_col].to_numpy(), threshold)
    return {**frame, **{f"video_{k}": v for k, v in video.items()}}


def breakdown(frames: pd.DataFrame, columns: dict[str, str], threshold: float, aggregation: AggregationParams,
              by: str) -> dict[str, dict[str, Any]]:
    """Metrics of each score column per value of `by` (e.g. `dataset`, `method`).

    For `method`, each manipulation method's fakes are judged against all the real frames (the FF++ convention):
    the group of a method alone holds one class, on which no AUC exists. Rows whose `by` is missing are left out.

    Args:
        frames: Rows with `sample_id`, `label`, `by` and the score columns.
        columns: Report name (e.g. "ensemble", a member) to its score column.
        threshold: Decision threshold for accuracy.
        aggregation: Frames to videos.
        by: The grouping column.

    Returns:
        `{group value: {report name: metrics}}`.
    """
    if by not in frames:
        return {}
    reals = frames[frames["label"] == 0]
    out: dict[str, dict[str, Any]] = {}
    for value, group in frames.dropna(subset=[by]).groupby(by, sort=True):
        if by == "method":
            fakes = group[group["label"] == 1]
            if fakes.empty:
                continue  # the reals' own "method": they are in every method's rows
            group = pd.concat([reals, fakes])
        out[str(value)] = {name: frame_and_video_metrics(group, threshold, col, aggregation)
                           for name, col in columns.items()}
    return out
