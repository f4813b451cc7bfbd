"""Paired cluster bootstrap statistics: confidence intervals of metrics and the AUC difference of two scorers.

Samples that share a person are not independent (a fake and the reals of its target and source, the frames of one
video), so the bootstrap resamples whole **identity clusters** (`identity_clusters`: connected components over the
persons each sample shows, `dfd.data.identity`). The test split is a sample of clusters, so each resample draws as
many clusters as there are, with replacement, from all of them: **unstratified**. Clusters mix labels, and an
earlier scheme stratified them by composition (all real, all fake, mixed); a stratum of one cluster is then
redrawn identically every time and its variance vanishes (one big mixed cluster beside a few pure ones gave a
lower bound of +0.027 where the true clusters gave -0.012). Unstratified, the class mix varies between resamples
as it would between test splits. A resample that lacks a class has no AUC: it is **redrawn** (the bootstrap
conditional on both classes being present), never dropped silently or filled by stratification. With few
clusters this conditioning matters and the interval is wide; the gate asks for `champion.min_clusters_per_class`
clusters of each class before it decides at all (Field & Welsh 2007 on the cluster bootstrap; Obuchowski 1997 on
clustered ROC data). When every resample gives the same difference the data cannot tell the scorers apart: the
p-value is undefined (NaN, with a note), never 1/(B+1). A resample is drawn as counts per cluster, so AUCs are
computed for all resamples at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from dfd.data.identity import person_components


def fast_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count one half), as scikit-learn's `roc_auc_score` computes it."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def identity_clusters(persons: Sequence[object], samples: Sequence[object] | None = None) -> np.ndarray:
    """A cluster number per row from the persons each row shows: rows sharing a person, or a sample, are one cluster.

    Args:
        persons: Per row, the names of the persons it shows (the manifest's `persons`; see `persons_of`). Names are
            compared whole, never split.
        samples: Per row, its sample id: the frames of one video are one cluster even without persons; None: rows
            are linked by persons alone.
    """
    return person_components(persons, samples)


def persons_of(frame: pd.DataFrame) -> list[object]:
    """Each row's persons: the `persons` column; a table written before it: its `identity` as one whole name;
    neither: none (each sample is then its own cluster through its id)."""
    if "persons" in frame:
        return frame["persons"].tolist()
    if "identity" in frame:
        return [[v] if isinstance(v, str) and v else [] for v in frame["identity"]]
    return [[] for _ in range(len(frame))]


def cluster_counts(labels: np.ndarray, clusters: np.ndarray | None, n_boot: int, seed: int,
                   max_rounds: int = 100) -> np.ndarray:
    """How many times each row is drawn in each resample, (n_boot, n_rows) ints (see the module doc).

    Clusters are drawn with replacement from all of them (unstratified); a resample without both classes is
    redrawn. After `max_rounds` batches of redraws (a class in very few clusters), fewer rows come back.

    Args:
        labels: 0/1 per row.
        clusters: A cluster id per row (rows of a cluster are drawn together); None: every row its own cluster.
        n_boot: Number of resamples.
        seed: Seeds numpy's generator: the same call gives the same resamples.
        max_rounds: Batches of redraws before giving up on the resamples still missing.
    """
    labels = np.asarray(labels, dtype=int)
    clusters = np.arange(len(labels)) if clusters is None else np.asarray(clusters)
    _, inv = np.unique(clusters, return_inverse=True)
    k = int(inv.max()) + 1 if len(inv) else 0
    n_fake, n_all = np.bincount(inv, weights=labels, minlength=k), np.bincount(inv, minlength=k)
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    need = n_boot
    for _ in range(max_rounds if k else 0):
        counts = rng.multinomial(k, np.full(k, 1 / k), need)  # k clusters drawn with replacement
        fakes, rows = counts @ n_fake, counts @ n_all
        ok = (fakes > 0) & (fakes < rows)  # both classes present
        kept.append(counts[ok])
        need -= int(ok.sum())
        if need <= 0:
            break
    counts = np.concatenate(kept)[:n_boot] if kept else np.zeros((0, k), dtype=np.int64)
    return counts[:, inv]


def resample_indices(labels: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None,
                     ) -> list[np.ndarray]:
    """The resamples of `cluster_counts` as row-index arrays, for metrics that take rows (ECE, log loss, ...)."""
    rows = np.arange(len(labels))
    return [np.repeat(rows, c) for c in cluster_counts(labels, groups, n_boot, seed)]


def weighted_aucs(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The AUC under each row of `weights` (n_boot, n): Mann-Whitney with weights, ties one half, all at once.

    Sorting once and summing the negatives' weight below each tie group makes it O(n_boot * n), which is what keeps
    a 1000-resample test, or the 200-seed size check of the tests, within seconds.
    """
    labels = np.asarray(labels, dtype=int)
    order = np.argsort(scores, kind="stable")
    s, y, w = np.asarray(scores, dtype=float)[order], labels[order], np.asarray(weights, dtype=float)[:, order]
    if not len(s):
        return np.full(len(w), np.nan)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first row of each group of tied scores
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives' weight strictly below each tie group
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


@dataclass(frozen=True)
class PairedTest:
    """The AUC difference `b - a` of two scorers on the same samples, with its bootstrap interval and p-value."""

    auc_a: float
    auc_b: float
    diff: float  # auc_b - auc_a
    ci_low: float  # two-sided interval at `confidence`
    ci_high: float
    p_value: float  # two-sided: H0 says the two AUCs are equal
    n_boot: int
    confidence: float
    lower: float = float("nan")  # one-sided `confidence` lower bound: what non-inferiority/superiority is judged on
    # One-sided `confidence` upper bound: below -margin the candidate is shown worse, however wide the interval.
    upper: float = float("nan")
    n_clusters: int = 0
    note: str = ""  # why the test is undefined, when it is

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def paired_auc_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 1000,
                    seed: int = 0, confidence: float = 0.95, groups: np.ndarray | None = None) -> PairedTest:
    """Paired cluster bootstrap of the AUC difference of two scorers evaluated on the same rows.

    Both scorers are re-evaluated on each resample, so what is shared (the samples) cancels. Intervals are
    percentile intervals. The p-value tests H0: diff = 0 by centring the bootstrap distribution on zero (Efron &
    Tibshirani, ch. 16): the share of resampled differences whose distance from the observed one is at least the
    observed distance from zero.

    Args:
        labels: 0/1 per row.
        scores_a: Scorer A (the champion, in the gate).
        scores_b: Scorer B (the candidate).
        n_boot: Resamples.
        seed: Seeds the resampling.
        confidence: Coverage of the two-sided interval and of the one-sided lower bound (1 - alpha).
        groups: Cluster id per row (see `identity_clusters`); None: every row independent.
    """
    labels = np.asarray(labels, dtype=int)
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if not (len(labels) == len(a) == len(b)):
        raise ValueError(f"labels and scores differ in length: {len(labels)}, {len(a)}, {len(b)}")
    n_clusters = len(np.unique(groups)) if groups is not None else len(labels)
    auc_a, auc_b = fast_auc(labels, a), fast_auc(labels, b)
    diff = auc_b - auc_a
    counts = cluster_counts(labels, groups, n_boot, seed)
    diffs = weighted_aucs(labels, b, counts) - weighted_aucs(labels, a, counts)
    diffs = diffs[np.isfinite(diffs)]
    nan = float("nan")
    if not np.isfinite(diff) or not len(diffs):
        return PairedTest(auc_a, auc_b, nan, nan, nan, nan, n_boot, confidence, nan, nan, n_clusters,
                          "no resample holds both classes")
    if np.ptp(diffs) <= 1e-12:
        # Every resample gives the same difference (the scorers rank every sample alike): the interval is that
        # point, but a p-value has no spread to be judged by, so it is undefined rather than 1/(B+1).
        return PairedTest(auc_a, auc_b, float(diff), float(diff), float(diff), nan, n_boot, confidence,
                          float(diff), float(diff), n_clusters,
                          f"every resample gives the difference {diff:+.4f}: no p-value")
    tail = 1 - confidence
    lo, hi = np.quantile(diffs, [tail / 2, 1 - tail / 2])
    lower, upper = (float(q) for q in np.quantile(diffs, [tail, confidence]))
    # +1 in numerator and denominator: a bootstrap p-value is never exactly 0 (Davison & Hinkley 1997, eq. 4.11).
    p = (np.sum(np.abs(diffs - diff) >= abs(diff) - 1e-12) + 1) / (len(diffs) + 1)
    return PairedTest(auc_a, auc_b, float(diff), float(lo), float(hi), float(min(p, 1.0)), n_boot, confidence,
                      lower, upper, n_clusters)


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
        groups: Rows drawn together (see `cluster_counts`).
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
