"""The test scorecard of the evaluate stage: the ensemble's and each member's metrics, overall, per dataset and per
manipulation method, before and after calibration, and the plots that show them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfd.evaluation.aggregate import video_scores
from dfd.evaluation.ece import ece_interval
from dfd.evaluation.metrics import breakdown, eer, frame_and_video_metrics, reliability_bins
from dfd.evaluation.plots import confusion_plot, pr_plot, reliability_plot, roc_plot, score_histogram
from dfd.evaluation.significance import (
    bootstrap_ci,
    cluster_counts,
    fast_auc,
    identity_clusters,
    persons_of,
    resample_indices,
)
from dfd.platform.config import AggregationParams

#: Members are judged on their own P(fake) at 0.5 (the ensemble's threshold lives on the calibrated ensemble scale).
MEMBER_THRESHOLD = 0.5
#: Resamples of the test intervals: 200 put a 95% percentile bound within about 0.005 of its limit on a test split
#: of a few thousand frames, and both metrics are cheap (a rank or a bincount per resample).
CI_RESAMPLES = 200


def _groups(frames: pd.DataFrame, samples: pd.DataFrame | None) -> np.ndarray:
    """Identity clusters of `frames`' rows from their samples' persons (`persons_of`: an older table's identity)."""
    cols = [c for c in ("persons", "identity") if samples is not None and c in samples]
    rows = frames[["sample_id"]].merge(samples.drop_duplicates("sample_id")[["sample_id", *cols]], on="sample_id",
                                       how="left") if cols else frames[["sample_id"]]
    return identity_clusters(persons_of(rows), rows["sample_id"].tolist())


def metric_intervals(test: pd.DataFrame, samples: pd.DataFrame | None, confidence: float = 0.95,
                     aggregation: AggregationParams | None = None) -> dict[str, float]:
    """Identity-cluster bootstrap intervals of the test AUC (frames: `auc_ci_low`, `auc_ci_high`) and of the
    debiased ECE per video, equal-width and equal-mass (`video_ece_ci_low`, ..., `video_ece_equal_mass_ci_high`:
    bias-corrected, see `dfd.evaluation.ece`), with how many clusters each drew (`ci_clusters`, `ece_ci_clusters`).

    The ECE is per video (an image is a one-frame video), the served model's unit: frames of a video are no
    independent draws, and the estimator's bias correction assumes independent ones.
    """
    groups = _groups(test, samples)
    y, p = test["label"].to_numpy(), test["prob"].to_numpy()
    draws = resample_indices(y, CI_RESAMPLES, seed=0, groups=groups)
    _, lo, hi = bootstrap_ci(y, p, fast_auc, resamples=draws, confidence=confidence)
    out = {"ci_clusters": float(len(set(groups))), "auc_ci_low": lo, "auc_ci_high": hi}
    return {**out, **video_intervals(video_scores(test, aggregation or AggregationParams()), samples, confidence)}


def video_intervals(vids: pd.DataFrame, samples: pd.DataFrame | None, confidence: float = 0.95) -> dict[str, float]:
    """The identity-cluster intervals of the debiased ECE of per-file scores `vids` (`sample_id`, `label`, `prob`):
    the file rule's scores, whichever rule made them (`dfd.evaluation.file_rules`)."""
    out: dict[str, float] = {}
    v_groups = _groups(vids, samples)
    vy, vp = vids["label"].to_numpy(), vids["prob"].to_numpy()
    counts = cluster_counts(vy, v_groups, CI_RESAMPLES, seed=0)
    out["ece_ci_clusters"] = float(len(set(v_groups)))
    for key, strategy in (("video_ece", "uniform"), ("video_ece_equal_mass", "quantile")):
        _, lo, hi = ece_interval(vy, vp, counts, strategy=strategy, confidence=confidence)
        out.update({f"{key}_ci_low": lo, f"{key}_ci_high": hi})
    return out


def test_scorecard(preds: pd.DataFrame, spec: dict[str, Any], threshold: float, samples: pd.DataFrame | None,
                   plots_dir: Path) -> dict[str, Any]:
    """Metrics of the test split and the plots under `plots_dir`.

    Args:
        preds: The ensemble's predictions.parquet (val and test rows; `prob` final, `prob_fused` before calibration).
        spec: ensemble.json.
        threshold: The decision threshold on the final P(fake).
        samples: Per-sample attributes (`sample_id`, `dataset`, `method`, `identity`) for the breakdowns and the
            ECE interval's clusters; None: none (every sample its own cluster).
        plots_dir: Where the PNGs go.

    Returns:
        `{"ensemble", "ensemble_uncalibrated", "members", "by_dataset", "by_method", "plots"}`.
    """
    members = list(spec["members"])
    agg = AggregationParams(**spec.get("aggregation", {}))
    test = preds[preds["split"] == "test"]
    out: dict[str, Any] = {
        "ensemble": {**frame_and_video_metrics(test, threshold, "prob", agg),
                     **metric_intervals(test, samples, aggregation=agg)},
        "members": {m: frame_and_video_metrics(test, MEMBER_THRESHOLD, m, agg) for m in members}}
    if "prob_fused" in preds:
        val = preds[preds["split"] == "val"]
        _, fused_threshold = eer(val["label"].to_numpy(), val["prob_fused"].to_numpy())
        out["ensemble_uncalibrated"] = frame_and_video_metrics(test, fused_threshold, "prob_fused", agg)
    if samples is not None:
        frames = test.merge(samples.drop_duplicates("sample_id").drop(columns=["identity", "persons"], errors="ignore"),
                            on="sample_id", how="left")
        cols = {"ensemble": "prob", **{m: m for m in members}}
        out["by_dataset"] = breakdown(frames, cols, threshold, agg, "dataset")
        out["by_method"] = breakdown(frames, cols, threshold, agg, "method")
    y = test["label"].to_numpy()
    plots = [roc_plot(test, [*members, "prob"], plots_dir / "roc_test.png", "ROC on the test split (frames)"),
             pr_plot(test, [*members, "prob"], plots_dir / "pr_test.png", "Precision-recall on the test split"),
             confusion_plot(y, test["prob"].to_numpy(), threshold, plots_dir / "confusion_test.png",
                            "Ensemble on the test split"),
             score_histogram(test, plots_dir / "scores_test.png", threshold, "Ensemble P(fake) on the test split")]
    curves = {"after calibration": reliability_bins(y, test["prob"].to_numpy())}
    if "prob_fused" in test:
        curves = {"fused, before calibration": reliability_bins(y, test["prob_fused"].to_numpy()), **curves}
        plots.append(score_histogram(test, plots_dir / "scores_fused_test.png", float("nan"),
                                     "Fused score before calibration (test)", "prob_fused"))
    plots.append(reliability_plot(curves, plots_dir / "reliability_test.png",
                                  f"Reliability on the test split ({spec.get('post_calibration', {}).get('method')})"))
    out["plots"] = sorted(p.name for p in plots)
    return out
