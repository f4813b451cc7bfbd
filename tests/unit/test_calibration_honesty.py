"""Calibration measured honestly: post-fusion calibration fitted on out-of-fold fused scores, equal-mass ECE, an
identity-cluster bootstrap interval for ECE, and the fusion study's trial metrics under their own names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from dfd.evaluation.calibration import apply_post_calibration, calibrate, fit_calibration, fit_post_calibration
from dfd.evaluation.ece import calibration_error
from dfd.evaluation.fusion import FitContext, apply_fusion, cross_validate, fit_fusion
from dfd.evaluation.metrics import binary_metrics, expected_calibration_error, reliability_bins
from dfd.evaluation.scorecard import metric_intervals
from tasks import ensemble
from tests.helpers import tiny_params


def _files(tmp_path: Path, n: int = 240) -> dict[str, Path]:
    """Two members' predictions: val and test halves, 12 identities' worth of samples, members of unequal skill."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, n)
    base = pd.DataFrame({"sample_id": [f"s{i // 2}" for i in range(n)], "frame": np.arange(n) % 2, "label": labels,
                         "split": np.where(np.arange(n) < n // 2, "val", "test")})
    paths = {}
    for name, noise in (("a", 0.3), ("b", 0.5)):
        paths[name] = tmp_path / f"{name}.parquet"
        base.assign(prob=np.clip(0.3 + labels * 0.4 + rng.normal(0, noise, n), 0, 1)).to_parquet(paths[name])
    return paths


def test_equal_mass_ece_matches_scikit_learn_bins_and_sees_what_equal_width_hides() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.9, 0.999, 1000)  # a confident model: every score in the top equal-width bin
    labels = np.where(scores < np.median(scores), rng.random(1000) < 0.80, 1).astype(int)
    r = reliability_bins(labels, scores, 10, "quantile")
    assert (r["count"] == 100).all()  # equal mass
    true, pred = calibration_curve(labels, scores, n_bins=10, strategy="quantile")
    assert np.allclose(r["fake_share"], true) and np.allclose(r["mean_score"], pred)
    wide = expected_calibration_error(labels, scores)
    mass = expected_calibration_error(labels, scores, strategy="quantile")
    assert reliability_bins(labels, scores)["count"].iloc[-1] == 1000  # equal width: one bin holds everything
    assert mass > 1.3 * wide  # ~0.075 vs ~0.05: the lower half's overconfidence shows in equal-mass bins only
    assert binary_metrics(labels, scores)["ece_equal_mass"] == pytest.approx(
        calibration_error(labels, scores, strategy="quantile"))  # the debiased one on the same equal-mass bins
    with pytest.raises(ValueError, match="unknown binning strategy"):
        reliability_bins(labels, scores, 10, "log")


def test_metric_intervals_are_a_cluster_bootstrap_around_the_test_ece_and_auc() -> None:
    rng = np.random.default_rng(2)
    n = 600
    test = pd.DataFrame({"sample_id": [f"v{i // 3}" for i in range(n)], "label": rng.integers(0, 2, n)})
    samples = pd.DataFrame({"sample_id": test["sample_id"].unique()})
    samples["identity"] = [f"p{i % 10}" for i in range(len(samples))]  # 10 people ...
    person = test["sample_id"].map(samples.set_index("sample_id")["identity"]).str[1:].astype(int).to_numpy()
    shift = rng.normal(0, 0.15, 10)[person]  # ... each miscalibrated their own way: errors shared within a person
    test["prob"] = np.clip(0.2 + 0.5 * test["label"] + shift + rng.normal(0, 0.1, n), 0, 1)
    by_person = metric_intervals(test, samples)
    by_video = metric_intervals(test, None)
    assert by_person["ci_clusters"] == 10 and by_video["ci_clusters"] == 200
    auc = roc_auc_score(test["label"], test["prob"])
    assert by_person["ece_ci_clusters"] == 10 and by_video["ece_ci_clusters"] == 200  # per video: 200 videos
    for ci in (by_person, by_video):
        assert ci["auc_ci_low"] <= auc <= ci["auc_ci_high"]
        assert 0 <= ci["video_ece_ci_low"] < ci["video_ece_ci_high"]
    # Errors shared within a person: drawing whole people widens the ECE interval, as it does the AUC's.
    assert (by_person["video_ece_ci_high"] - by_person["video_ece_ci_low"]
            > by_video["video_ece_ci_high"] - by_video["video_ece_ci_low"])


def test_post_fusion_calibration_is_fitted_on_out_of_fold_fused_scores(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    cfg = tiny_params(tmp_path, ensemble={"method": "stacking", "calibration": "platt", "cv_folds": 4}).ensemble
    ensemble.build_ensemble(cfg, paths, tmp_path / "ens")
    spec = pd.read_json(tmp_path / "ens" / "ensemble.json", typ="series")
    assert spec["post_calibration_fit"].startswith("out-of-fold fused scores")
    # The same chain by hand: the CV's out-of-fold fused scores, and what an in-sample fit would have given.
    wide = ensemble.load_predictions(paths)[0]
    val = wide[wide["split"] == "val"].reset_index(drop=True)
    y = val["label"].to_numpy()
    groups = ensemble._identities(val, None)  # the stage's folds: here every sample its own cluster
    assert len(set(groups)) == val["sample_id"].nunique()
    cv = cross_validate("stacking", "platt", val[["a", "b"]].to_numpy(), y, groups, FitContext(cfg, ["a", "b"]))
    ok = np.isfinite(cv["oof_fused"])
    expected = fit_post_calibration("platt", cv["oof_fused"][ok], y[ok])
    assert spec["post_calibration"]["a"] == pytest.approx(expected["a"])
    assert spec["post_calibration"]["b"] == pytest.approx(expected["b"])
    members = fit_calibration(val, ["a", "b"])
    X = np.column_stack([calibrate(val[m].to_numpy(), members[m]) for m in ("a", "b")])
    in_sample = fit_post_calibration("platt", apply_fusion(fit_fusion("stacking", X, y, FitContext(cfg, ["a", "b"])),
                                                           X), y)
    assert in_sample["a"] != pytest.approx(expected["a"], rel=1e-3)  # the two fits differ: the test can tell them
    p = apply_post_calibration(spec["post_calibration"], np.array([0.2, 0.8]))
    assert p[0] < p[1]


def test_study_trials_report_the_objective_under_its_name(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    seen: list[dict[str, float]] = []
    cfg = tiny_params(tmp_path, ensemble={"trials": 3, "cv_folds": 2}).ensemble
    ensemble.build_ensemble(cfg, paths, tmp_path / "ens",
                            lambda number, w, v: seen.append({**v, **{f"w_{k}": x for k, x in w.items()}}))
    wide = ensemble.load_predictions(paths)[0]
    spec = pd.read_json(tmp_path / "ens" / "ensemble.json", typ="series")
    val = wide[wide["split"] == "val"]
    X = np.column_stack([calibrate(val[m].to_numpy(), spec["calibration"][m]) for m in ("a", "b")])
    for v in seen:
        w = np.array([v["w_a"], v["w_b"]])
        # "auc" is the AUC of that trial's fused score; the tie-broken study score is logged apart, slightly lower
        assert v["auc"] == pytest.approx(roc_auc_score(val["label"], X @ (w / w.sum())))
        assert v["study_score"] < v["auc"]
