"""Fusion methods, post-fusion calibration, the identity-grouped CV, the resumable study, and ECE/Brier by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfd.evaluation.calibration import apply_post_calibration, fit_post_calibration, list_post_calibrations
from dfd.evaluation.ece import bin_index, debiased_squared_ce
from dfd.evaluation.fusion import FitContext, apply_fusion, cross_validate, fit_fusion, identity_folds
from dfd.evaluation.metrics import binary_metrics, expected_calibration_error, reliability_bins
from dfd.platform.config import EnsembleParams
from dfd.platform.errors import ConfigError
from tasks import ensemble
from tests.helpers import tiny_params


def _cfg(tmp_path: Path, **ensemble_kw: object) -> EnsembleParams:
    return tiny_params(tmp_path, ensemble=ensemble_kw).ensemble


def test_ece_and_brier_match_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.35, 0.31, 0.95, 0.99])
    # bins (10, equal width): [0,.1): {0.05 -> y0}; [.3,.4): {0.35 y0, 0.31 y1}; [.9,1]: {0.95 y1, 0.99 y1}
    ece = (1 / 5) * abs(0 - 0.05) + (2 / 5) * abs(0.5 - 0.33) + (2 / 5) * abs(1 - 0.97)
    assert expected_calibration_error(y, p) == pytest.approx(ece)
    brier = np.mean((p - y) ** 2)
    m = binary_metrics(y, p)
    assert m["brier"] == pytest.approx(brier) and m["ece_plugin"] == pytest.approx(ece)
    # Debiased (Kumar et al.): a one-sample bin adds 0; (0.5 - 0.33)^2 - 0.5 * 0.5 / 1 and (1 - 0.97)^2 - 0, each 2/5.
    squared = 0.4 * ((0.5 - 0.33) ** 2 - 0.25) + 0.4 * (1 - 0.97) ** 2
    assert debiased_squared_ce(y, p, bin_index(p))[0] == pytest.approx(squared)
    assert squared < 0 and m["ece"] == 0.0  # reported as sqrt(max(0, squared)): no evidence of miscalibration
    r = reliability_bins(y, np.array([1.0, 0.0, 0.999, 0.5, 0.5]))
    assert r["count"].tolist() == [1, 0, 0, 0, 0, 2, 0, 0, 0, 2]  # 1.0 falls in the last bin


def _miscalibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True P(fake) spread over [0, 1], reported far too confidently (logits x 4)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return 1 / (1 + np.exp(-4 * z)), y


def test_temperature_scaling_lowers_ece_of_overconfident_scores() -> None:
    p_fit, y_fit = _miscalibrated(2000, 0)
    p_test, y_test = _miscalibrated(2000, 1)
    fitted = fit_post_calibration("temperature", p_fit, y_fit)
    assert fitted["temperature"] == pytest.approx(4.0, rel=0.2)
    before = expected_calibration_error(y_test, p_test)
    after = expected_calibration_error(y_test, apply_post_calibration(fitted, p_test))
    assert before > 0.1 and after < before / 2


@pytest.mark.parametrize("method", ["platt", "isotonic", "temperature", "none"])
def test_post_calibration_round_trips_through_json(method: str) -> None:
    import json

    from sklearn.isotonic import IsotonicRegression

    p, y = _miscalibrated(500, 2)
    fitted = fit_post_calibration(method, p, y)
    again = json.loads(json.dumps(fitted))  # as ensemble.json stores it
    out = apply_post_calibration(again, p)
    assert np.array_equal(out, apply_post_calibration(fitted, p)) and out.min() >= 0 and out.max() <= 1
    if method == "isotonic":  # the stored breakpoints reproduce scikit-learn's own predictions
        iso = IsotonicRegression(y_min=1e-3, y_max=1 - 1e-3, out_of_bounds="clip").fit(p, y)
        probe = np.linspace(-0.1, 1.1, 301)
        assert np.allclose(apply_post_calibration(again, probe), iso.predict(probe))
    if method == "platt":
        assert expected_calibration_error(y, out) < expected_calibration_error(y, p)
    if method == "none":
        assert np.array_equal(out, p)
    assert sorted(list_post_calibrations()) == ["isotonic", "none", "platt", "temperature"]


def test_unknown_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown calibration"):
        fit_post_calibration("beta", np.array([0.2, 0.8]), np.array([0, 1]))
    with pytest.raises(ConfigError, match="unknown fusion"):
        fit_fusion("voting", np.zeros((2, 1)), np.array([0, 1]), FitContext(_cfg(tmp_path), ["a"]))


def test_stacking_beats_the_plain_average_with_an_anti_informative_member(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.15, n), 0.01, 0.99)
    anti = np.clip(0.5 - (y - 0.5) * 0.8 + rng.normal(0, 0.1, n), 0.01, 0.99)  # confidently wrong
    X = np.column_stack([good, anti])
    fit, test = slice(0, 300), slice(300, None)
    ctx = FitContext(_cfg(tmp_path), ["good", "anti"])
    stacked = fit_fusion("stacking", X[fit], y[fit], ctx)
    assert stacked["coef"]["anti"] < 0 < stacked["coef"]["good"]
    auc_stack = binary_metrics(y[test], apply_fusion(stacked, X[test]))["auc"]
    auc_mean = binary_metrics(y[test], X[test].mean(axis=1))["auc"]
    assert auc_mean < 0.5 < 0.8 < auc_stack


def test_confidence_fusion_follows_the_sure_member(tmp_path: Path) -> None:
    fitted = fit_fusion("confidence", np.zeros((2, 2)), np.array([0, 1]), FitContext(_cfg(tmp_path), ["a", "b"]))
    fused = apply_fusion(fitted, np.array([[0.99, 0.45], [0.5, 0.5]]))
    assert fused[0] > 0.9 and fused[1] == pytest.approx(0.5)  # a plain average would give 0.72 for the first


def test_identity_grouped_cv_never_splits_an_identity(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat([f"id{i}" for i in range(13)], rng.integers(2, 9, 13))
    folds = identity_folds(groups, 5)
    per_identity = pd.DataFrame({"g": groups, "f": folds}).groupby("g")["f"].nunique()
    assert (per_identity == 1).all() and set(folds) == set(range(5))
    y = (rng.random(len(groups)) < 0.5).astype(int)
    X = np.column_stack([np.clip(y * 0.4 + rng.uniform(0, 0.6, len(y)), 0, 1), rng.uniform(0, 1, len(y))])
    cv = cross_validate("stacking", "platt", X, y, groups, FitContext(_cfg(tmp_path, cv_folds=4), ["a", "b"]))
    assert cv["folds"] == 4 and len(cv["values"]) == 4 and np.isfinite(cv["mean"]) and cv["std"] >= 0
    assert np.isfinite(cv["oof"]).sum() > len(y) / 2  # held-out scores for the folds that could be fitted


def _prediction_files(tmp_path: Path, n: int = 160) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, n)
    base = pd.DataFrame({"sample_id": [f"s{i // 2}" for i in range(n)], "frame": np.arange(n) % 2, "label": labels,
                         "split": np.where(np.arange(n) < n // 2, "val", "test")})
    paths = {}
    for name, noise in (("a", 0.25), ("b", 0.4)):
        paths[name] = tmp_path / f"{name}.parquet"
        base.assign(prob=np.clip(0.45 + labels * 0.1 + rng.normal(0, noise * 0.1, n), 0, 1)).to_parquet(paths[name])
    return paths


def test_optuna_study_resumes_from_its_storage(tmp_path: Path) -> None:
    paths = _prediction_files(tmp_path)
    seen: list[int] = []
    first = ensemble.build_ensemble(_cfg(tmp_path, trials=6), paths, tmp_path / "ens",
                                    lambda number, w, v: seen.append(number))
    assert (tmp_path / "ens" / "optuna.db").is_file() and seen == list(range(6))
    seen.clear()
    ensemble.build_ensemble(_cfg(tmp_path, trials=9), paths, tmp_path / "ens", lambda number, w, v: seen.append(number))
    spec = pd.read_json(tmp_path / "ens" / "ensemble.json", typ="series")
    assert seen == [6, 7, 8]  # only the three new trials ran
    assert spec["fusion"]["resumed_trials"] == 6 and spec["fusion"]["trials"] == 9
    assert first.cv and "mean" in first.cv


def test_ensemble_calibrates_a_squeezed_fused_score(tmp_path: Path) -> None:
    """Members that rank well inside a narrow band (the demo's 0.57-0.60) give a spread, calibrated P(fake)."""
    paths = _prediction_files(tmp_path, 400)
    res = ensemble.build_ensemble(_cfg(tmp_path, trials=5, calibration="platt"), paths, tmp_path / "ens")
    preds = pd.read_parquet(res.predictions)
    test = preds[preds["split"] == "test"]
    assert test["prob"].quantile(0.95) - test["prob"].quantile(0.05) > 0.6
    assert binary_metrics(test["label"], test["prob"])["ece"] < 0.1


def test_per_method_breakdown_judges_each_method_against_all_reals() -> None:
    from dfd.evaluation.metrics import breakdown
    from dfd.platform.config import AggregationParams

    frames = pd.DataFrame({"sample_id": list("abcdef"), "label": [0, 0, 1, 1, 1, 1],
                           "method": ["real", "real", "blend", "blend", "swap", "swap"],
                           "dataset": "demo", "prob": [0.1, 0.4, 0.9, 0.8, 0.3, 0.2]})
    out = breakdown(frames, {"ensemble": "prob"}, 0.5, AggregationParams(), "method")
    assert set(out) == {"blend", "swap"}  # the reals are in both, not a method of their own
    assert out["blend"]["ensemble"]["auc"] == 1.0 and out["blend"]["ensemble"]["n"] == 4
    assert out["swap"]["ensemble"]["auc"] == pytest.approx(0.5)  # fake > real in 2 of 4 pairs (0.3, 0.2 > 0.1)
    assert breakdown(frames, {"ensemble": "prob"}, 0.5, AggregationParams(), "dataset")["demo"]["ensemble"]["n"] == 6
