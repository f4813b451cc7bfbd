"""Detection metrics at frame and video level: AUC, AP, EER, accuracy, log loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve


def eer(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false positive and false negative rates meet."""
    fpr, tpr, thr = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2), float(min(thr[i], 1.0))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, AP, EER, accuracy at `threshold`, and log loss of probabilities `scores` (fake = 1).

    Ranking metrics are NaN when only one class is present, rather than an exception mid-pipeline.
    """
    labels = np.asarray(labels, dtype=int)
    scores = np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7)
    out = {"n": float(len(labels)), "accuracy": float(((scores >= threshold) == labels).mean()) if len(labels) else
           float("nan"), "threshold": float(threshold)}
    if len(np.unique(labels)) < 2:
        return {**out, "auc": float("nan"), "ap": float("nan"), "eer": float("nan"), "log_loss": float("nan")}
    e, _ = eer(labels, scores)
    return {**out, "auc": float(roc_auc_score(labels, scores)), "ap": float(average_precision_score(labels, scores)),
            "eer": e, "log_loss": float(log_loss(labels, scores, labels=[0, 1]))}


def video_level(frames: pd.DataFrame, score_col: str = "prob") -> pd.DataFrame:
    """Average frame scores per sample (a video, or an image as a one-frame video)."""
    return frames.groupby("sample_id", as_index=False).agg(label=("label", "first"), **{score_col: (score_col, "mean")})


def frame_and_video_metrics(frames: pd.DataFrame, threshold: float, score_col: str = "prob") -> dict[str, float]:
    """Frame-level metrics, and video-level ones prefixed `video_`."""
    frame = binary_metrics(frames["label"].to_numpy(), frames[score_col].to_numpy(), threshold)
    vids = video_level(frames, score_col)
    video = binary_metrics(vids["label"].to_numpy(), vids[score_col].to_numpy(), threshold)
    return {**frame, **{f"video_{k}": v for k, v in video.items()}}
