"""Video-level aggregation of frame scores, chosen by name; evaluation and serving call the same function.

`confident` is the DFDC winner's rule (Seferbekov, 2020): when enough frames are confidently fake, a few
manipulated frames should decide, not be averaged away by the rest; when almost all are confidently real, the
confident ones decide; otherwise the plain mean.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from dfd.platform.config import AggregationParams
from dfd.platform.errors import ConfigError


def _mean(scores: np.ndarray, cfg: AggregationParams) -> float:
    return float(np.mean(scores))


def _median(scores: np.ndarray, cfg: AggregationParams) -> float:
    return float(np.median(scores))


def _confident(scores: np.ndarray, cfg: AggregationParams) -> float:
    n = len(scores)
    high = scores[scores > cfg.fake_threshold]
    if len(high) > n / cfg.fake_share_divisor and len(high) > cfg.min_fake_frames:
        return float(np.mean(high))
    low = scores[scores < cfg.real_threshold]
    if len(low) > cfg.real_share * n:
        return float(np.mean(low))
    return float(np.mean(scores))


AGGREGATIONS: dict[str, Callable[[np.ndarray, AggregationParams], float]] = {
    "mean": _mean, "median": _median, "confident": _confident}


def list_aggregations() -> list[str]:
    """Names usable in `ensemble.aggregation.method`."""
    return sorted(AGGREGATIONS)


def aggregate(scores: np.ndarray, cfg: AggregationParams) -> float:
    """One video's score from its frames' P(fake) (an image is a one-frame video).

    Raises:
        ValueError: When `scores` is empty: a video without a scored frame has no score, not a default one.
        ConfigError: For an unknown method name.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        raise ValueError("no frame scores to aggregate")
    if cfg.method not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation '{cfg.method}'", f"choose from {', '.join(list_aggregations())}")
    return AGGREGATIONS[cfg.method](scores, cfg)


def video_scores(frames: pd.DataFrame, cfg: AggregationParams, score_col: str = "prob") -> pd.DataFrame:
    """One row per `sample_id` with its label and aggregated `score_col` (frame rows in, video rows out)."""
    return frames.groupby("sample_id", as_index=False, sort=True).agg(
        label=("label", "first"), **{score_col: (score_col, lambda s: aggregate(s.to_numpy(), cfg))})
