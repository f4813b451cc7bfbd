"""Paired bootstrap statistics: confidence intervals of metrics and the significance of an AUC difference.

Frames of one video are not independent samples, so resampling draws whole groups (videos, `sample_id`) when groups
are given; it is stratified by label so that every resample holds both classes and its AUC is defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata


def fast_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count one half), as scikit-learn's `roc_auc_score` computes it."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def resample_indices(labels: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None,
                     ) -> list[np.ndarray]:
    """`n_boot` bootstrap resamples (row indices), drawing groups with replacement within each label.

    Args:
        labels: 0/1 per row.
        n_boot: Number of resamples.
        seed: Seeds numpy's generator: the same call gives the same resamples.
        groups: A group id per row (rows of a group are drawn together); None: every row is its own group.
    """
    labels = np.asarray(labels, dtype=int)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, group_of_row = np.unique(groups, return_inverse=True)
    order = np.argsort(group_of_row, kind="stable")
    bounds = np.flatnonzero(np.diff(group_of_row[order])) + 1
    members = np.split(order, bounds)  # row indices of each group
    group_label = np.array([labels[m[0]] for m in members])
    rng = np.random.default_rng(seed)
    by_label = [np.flatnonzero(group_label == c) for c in (0, 1)]
    out = []
    for _ in range(n_boot):
        picked = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in by_label if len(g)])
        out.append(np.concatenate([members[g] for g in picked]))
    return out


@dataclass(frozen=True)
class PairedTest:
    """The AUC difference `b - a` of two scorers on the same samples, with its bootstrap interval and p-value."""

    auc_a: float
    auc_b: float
    diff: float  # auc_b - auc_a
    ci_low: float
    ci_high: float
    p_value: float  # two-sided: H0 says the two AUCs are equal
    n_boot: int
    confidence: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_auc_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 1000,
                    seed: int = 0, confidence: float = 0.95, groups: np.ndarray | None = None) -> PairedTest:
    """Paired bootstrap of the AUC difference of two scorers evaluated on the same rows.

    Both scorers are re-evaluated on each resample, so what is shared (the samples) cancels. The p-value tests
    H0: diff = 0 by centring the bootstrap distribution on zero (Efron & Tibshirani, ch. 16): the share of resampled
    differences whose distance from the observed one is at least the observed distance from zero.
    """
    labels = np.asarray(labels, dtype=int)
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if not (len(labels) == len(a) == len(b)):
        raise ValueError(f"labels and scores differ in length: {len(labels)}, {len(a)}, {len(b)}")
    auc_a, auc_b = fast_auc(labels, a), fast_auc(labels, b)
    diff = auc_b - auc_a
    diffs = np.array([fast_auc(labels[i], b[i]) - fast_auc(labels[i], a[i])
                      for i in resample_indices(labels, n_boot, seed, groups)])
    diffs = diffs[np.isfinite(diffs)]
    if not np.isfinite(diff) or not len(diffs):
        nan = float("nan")
        return PairedTest(auc_a, auc_b, nan, nan, nan, nan, n_boot, confidence)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    # +1 in numerator and denominator: a bootstrap p-value is never exactly 0 (Davison & Hinkley 1997, eq. 4.11).
    p = (np.sum(np.abs(diffs - diff) >= abs(diff) - 1e-12) + 1) / (len(diffs) + 1)
    return PairedTest(auc_a, auc_b, float(diff), float(lo), float(hi), float(min(p, 1.0)), n_boot, confidence)


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, metric: Callable[[np.ndarray, np.ndarray], float],
                 n_boot: int = 1000, seed: int = 0, confidence: float = 0.95, groups: np.ndarray | None = None,
                 resamples: list[np.ndarray] | None = None) -> tuple[float, float, float]:
    """A metric and its percentile bootstrap interval: (value, low, high).

    Args:
        labels: 0/1 per row.
        scores: P(fake) per row.
        metric: `metric(labels, scores) -> float`.
        n_boot: Number of resamples (ignored when `resamples` is given).
        seed: Seeds the resampling.
        confidence: Interval coverage.
        groups: Rows drawn together (see `resample_indices`).
        resamples: Precomputed resamples, to evaluate several metrics (or models) on the same draws.
    """
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    draws = resamples if resamples is not None else resample_indices(labels, n_boot, seed, groups)
    values = np.array([metric(labels[i], scores[i]) for i in draws], dtype=float)
    values = values[np.isfinite(values)]
    point = float(metric(labels, scores))
    if not len(values):
        return point, float("nan"), float("nan")
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return point, float(lo), float(hi)
