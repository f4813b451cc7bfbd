"""A/B comparison of two models on the same face crops: metrics with bootstrap intervals, and the AUC difference test.

Used by `dfd compare` and by the register stage's champion/challenger check (which scores `@production` on the
candidate's test crops). Models are pyfunc models loaded through the Tracker; this module only scores and counts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from dfd.evaluation.delong import delong_test
from dfd.evaluation.metrics import eer
from dfd.evaluation.significance import bootstrap_ci, fast_auc, paired_auc_test, resample_indices
from dfd.platform.errors import DataError, DfdError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
LOGGED_MODEL_NAME = "ensemble"  # the name register logs the pyfunc under, inside its run


def resolve_model_uri(ref: str, model_name: str) -> str:
    """`models:/...` and `runs:/...` as given; a run id -> its logged ensemble; a bare number -> that version."""
    if ref.startswith(("models:/", "runs:/")):
        return ref
    if RUN_ID.match(ref):
        return f"runs:/{ref}/{LOGGED_MODEL_NAME}"
    if ref.isdigit():
        return f"models:/{model_name}/{ref}"
    raise DfdError(f"not a model reference: '{ref}'", "use models:/NAME/VERSION, models:/NAME@ALIAS, a run id, "
                   "or a version number")


def sample_frames(index: pd.DataFrame, split: str | None, max_crops: int | None, seed: int) -> pd.DataFrame:
    """The rows of a faces index to score: one split (None: all), a seeded sample of at most `max_crops` rows."""
    rows = index if split is None else index[index["split"] == split]
    if max_crops is not None and len(rows) > max_crops:
        rows = rows.sample(max_crops, random_state=seed)
    rows = rows.reset_index(drop=True)
    if rows.empty or rows["label"].nunique() < 2:
        raise DataError(f"the {split or 'whole'} set holds {len(rows)} crop(s) and "
                        f"{rows['label'].nunique() if len(rows) else 0} class(es): nothing to compare on",
                        "point --dataset at a faces index with real and fake crops")
    return rows


def load_crops(crops: pd.Series, crops_root: Path) -> np.ndarray:
    """RGB uint8 crops (N, H, W, 3); an unreadable crop is an error, never replaced by a neighbour."""
    images = []
    for c in crops:
        bgr = cv2.imread(str(crops_root / c), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"face crop unreadable: {crops_root / c}", "rerun the faces stage")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    sizes = {im.shape for im in images}
    if len(sizes) > 1:  # the faces stage writes one size; mixed sizes mean two indexes were merged
        raise DataError(f"face crops of several sizes under {crops_root}: {sorted(sizes)}", "rerun the faces stage")
    return np.stack(images)


def score(model: Any, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(fake) from a pyfunc model, in batches so that memory stays bounded."""
    out = [np.asarray(model.predict(crops[i:i + batch_size]), dtype=float).reshape(-1)
           for i in range(0, len(crops), batch_size)]
    scores = np.concatenate(out) if out else np.zeros(0)
    if len(scores) != len(crops) or not np.isfinite(scores).all():
        raise DfdError(f"the model returned {len(scores)} scores for {len(crops)} crops, or non-finite ones")
    return scores


def ece(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    which = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(labels[m].mean() - scores[m].mean())
    return float(total)


def _safe(fn: Any) -> Any:
    def metric(y: np.ndarray, s: np.ndarray) -> float:
        return fn(y, s) if len(np.unique(y)) == 2 else float("nan")
    return metric


METRICS = {
    "auc": _safe(fast_auc),
    "ap": _safe(lambda y, s: float(average_precision_score(y, s))),
    "eer": _safe(lambda y, s: eer(y, s)[0]),
    "log_loss": lambda y, s: float(-np.mean(y * np.log(np.clip(s, 1e-7, 1))
                                            + (1 - y) * np.log(np.clip(1 - s, 1e-7, 1)))),
    "brier": lambda y, s: float(np.mean((s - y) ** 2)),
    "ece": ece,
}


def compare_scores(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, groups: np.ndarray | None = None,
                   n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Both models' metrics with bootstrap intervals (on the same resamples), the paired AUC test (b - a) and DeLong's.

    `groups`: a cluster id per row (see `dfd.evaluation.significance.identity_clusters`); None: rows independent.
    """
    labels = np.asarray(labels, dtype=int)
    draws = resample_indices(labels, n_boot, seed, groups)
    table = {}
    for name, fn in METRICS.items():
        row = {}
        for side, s in (("a", scores_a), ("b", scores_b)):
            value, lo, hi = bootstrap_ci(labels, np.asarray(s, dtype=float), fn, resamples=draws,
                                         confidence=confidence)
            row[side] = {"value": value, "ci_low": lo, "ci_high": hi}
        table[name] = row
    test = paired_auc_test(labels, scores_a, scores_b, n_boot, seed, confidence, groups)
    delong = delong_test(labels, scores_a, scores_b, groups)  # a second opinion that needs no resampling
    return {"n": len(labels), "n_groups": len(np.unique(groups)) if groups is not None else len(labels),
            "metrics": table, "auc_test": test.to_dict(), "delong": delong.to_dict()}


def format_comparison(result: dict[str, Any], name_a: str, name_b: str) -> list[str]:
    """The comparison as text lines: a metric table with intervals, then the AUC difference and its p-value."""
    conf = round(result["auc_test"]["confidence"] * 100)
    head = [f"A = {name_a}", f"B = {name_b}",
            f"{result['n']} crops in {result['n_groups']} identity clusters; {conf}% bootstrap intervals "
            f"({result['auc_test']['n_boot']} resamples, whole clusters drawn together)", ""]
    cell = lambda m: f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"  # noqa: E731
    rows = [("metric", "A", "B")] + [(k, cell(v["a"]), cell(v["b"])) for k, v in result["metrics"].items()]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = head + ["  ".join(r[i].ljust(w[i]) for i in range(3)) for r in rows]
    t = result["auc_test"]
    lines += ["", f"AUC difference B - A: {t['diff']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}], "
              f"p = {_p(t['p_value'])} (paired bootstrap, two-sided)" + (f"; {t['note']}" if t.get("note") else "")]
    d = result.get("delong")
    if d:
        lines.append(f"DeLong (clustered, t on {d.get('dof', '?')} dof): diff {d['diff']:+.4f}, se {d['se']:.4f}, "
                     f"p = {_p(d['p_value'])} (two-sided)")
    return lines


def _p(value: float) -> str:
    """A p-value, or "undefined" when every resample (or the variance) left nothing to judge it by."""
    return f"{value:.4f}" if np.isfinite(value) else "undefined"
