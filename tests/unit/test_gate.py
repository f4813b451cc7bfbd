"""The paired bootstrap finds real AUC differences and not null ones; every gate check fails on its own."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dfd.evaluation.gate import decide, format_table, robustness_levels
from dfd.evaluation.significance import bootstrap_ci, fast_auc, paired_auc_test, resample_indices
from dfd.platform.config import GateParams


def _scores(rng: np.random.Generator, labels: np.ndarray, separation: float) -> np.ndarray:
    """Scores whose AUC grows with `separation` (a shifted Gaussian per class)."""
    return 1 / (1 + np.exp(-(labels * separation + rng.normal(0, 1, len(labels)))))


def test_fast_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(_scores(rng, labels, 1.0), 2)  # rounding makes ties
    assert fast_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_paired_bootstrap_finds_a_real_difference() -> None:
    hits = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        labels = np.repeat([0, 1], 150)
        weak, strong = _scores(rng, labels, 0.8), _scores(rng, labels, 2.5)  # AUC about 0.71 vs 0.96
        t = paired_auc_test(labels, weak, strong, n_boot=300, seed=seed)
        assert t.diff > 0.1
        hits += t.p_value < 0.05 and t.ci_low > 0
    assert hits >= 9  # power near 1 at this effect size


def test_paired_bootstrap_does_not_find_a_null_difference() -> None:
    false_positives, pvalues = 0, []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        labels = np.repeat([0, 1], 100)
        a, b = _scores(rng, labels, 1.5), _scores(rng, labels, 1.5)  # equally good, independent noise
        t = paired_auc_test(labels, a, b, n_boot=200, seed=seed)
        pvalues.append(t.p_value)
        false_positives += t.p_value < 0.05
    assert false_positives <= 6  # about 2 expected at alpha 0.05 over 40 null trials
    assert 0.3 < float(np.median(pvalues)) < 0.7  # p-values spread over (0, 1), as under H0


def test_grouped_resampling_keeps_groups_whole_and_both_classes() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    groups = np.array(["a", "a", "b", "c", "c", "d", "d", "e"])
    for idx in resample_indices(labels, 50, seed=3, groups=groups):
        drawn = groups[idx]
        assert set(labels[idx]) == {0, 1}
        for g in set(drawn):  # a group is drawn as a whole: its count is a multiple of its size
            assert np.sum(drawn == g) % np.sum(groups == g) == 0
    value, lo, hi = bootstrap_ci(labels, labels * 0.8 + 0.1, fast_auc, n_boot=50, groups=groups)
    assert value == 1.0 and lo == hi == 1.0


# --- the gate ---------------------------------------------------------------------------------------------------

GOOD_METRICS = {"ensemble": {"auc": 0.97, "video_auc": 0.98, "eer": 0.05, "accuracy": 0.93, "video_ece": 0.03},
                "threshold": 0.5, "drift": {"drifted_share": 0.1}}
GOOD_ROBUSTNESS = {"clean": {"auc": 0.97},
                   "perturbed": {"jpeg": {"90": {"auc": 0.96, "auc_drop": 0.01}, "50": {"auc": 0.9, "auc_drop": 0.07}},
                                 "gauss_blur": {"1.0": {"auc": 0.95, "auc_drop": 0.02}}},
                   "adversarial": {"fgsm": {"0.004": {"auc": 0.4, "auc_drop": 0.57}}}}
CFG = GateParams(min_auc=0.9, min_video_auc=0.9, max_eer=0.15, min_accuracy=0.8, max_ece=0.1,
                 max_auc_drop={}, max_auc_drop_default=0.1, max_drift_share=0.5)


def _champion(worse: bool) -> dict[str, Any]:
    """A real champion/challenger summary: the candidate is much worse than the champion, or equally good (on a
    sample large enough to show it within the default 0.01 margin: 2,000 videos, errors mostly shared)."""
    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1], 1000)
    latent = rng.normal(0, 1, len(labels))
    champ = labels * 2.5 + latent + rng.normal(0, 0.2, len(labels))
    cand = labels * (0.5 if worse else 2.5) + latent + rng.normal(0, 0.2, len(labels))
    t = paired_auc_test(labels, champ, cand, n_boot=300, seed=1)
    return {"version": "1", "run_id": "r1", "n": len(labels), "n_videos": len(labels), "n_clusters": len(labels),
            "level": "video", "test": t.to_dict()}


def test_a_candidate_meeting_every_bound_passes() -> None:
    gate = decide(CFG, GOOD_METRICS, GOOD_ROBUSTNESS, _champion(worse=False))
    assert gate["passed"] and gate["failed"] == []
    names = [c["name"] for c in gate["checks"]]
    assert names == ["min_auc", "min_video_auc", "max_eer", "min_accuracy", "max_ece", "max_auc_drop:gauss_blur",
                     "max_auc_drop:jpeg", "max_drift_share", "champion"]  # the default leaves the adversarial fgsm out
    jpeg = next(c for c in gate["checks"] if c["name"] == "max_auc_drop:jpeg")
    assert jpeg["value"] == pytest.approx(0.07) and "level 50" in jpeg["detail"]  # the worst level counts
    assert all({"name", "value", "threshold", "passed", "detail"} <= set(c) for c in gate["checks"])
    assert gate["champion"]["version"] == "1"
    assert len(format_table(gate)) == len(gate["checks"]) + 1


def _with(metrics: dict[str, Any], **ensemble: float) -> dict[str, Any]:
    return {**metrics, "ensemble": {**metrics["ensemble"], **ensemble}}


@pytest.mark.parametrize(("name", "metrics", "robustness", "worse"), [
    ("min_auc", _with(GOOD_METRICS, auc=0.85), GOOD_ROBUSTNESS, False),
    ("min_video_auc", _with(GOOD_METRICS, video_auc=0.8), GOOD_ROBUSTNESS, False),
    ("max_eer", _with(GOOD_METRICS, eer=0.2), GOOD_ROBUSTNESS, False),
    ("min_accuracy", _with(GOOD_METRICS, accuracy=0.7), GOOD_ROBUSTNESS, False),
    ("max_ece", _with(GOOD_METRICS, video_ece=0.25), GOOD_ROBUSTNESS, False),
    ("max_auc_drop:jpeg", GOOD_METRICS,
     {**GOOD_ROBUSTNESS, "perturbed": {**GOOD_ROBUSTNESS["perturbed"],
                                       "jpeg": {"90": {"auc_drop": 0.01}, "30": {"auc_drop": 0.4}}}}, False),
    ("max_drift_share", {**GOOD_METRICS, "drift": {"drifted_share": 0.8}}, GOOD_ROBUSTNESS, False),
    ("champion", GOOD_METRICS, GOOD_ROBUSTNESS, True),
])
def test_each_check_fails_on_its_own(name: str, metrics: dict, robustness: dict, worse: bool) -> None:
    gate = decide(CFG, metrics, robustness, _champion(worse))
    assert gate["passed"] is False and gate["failed"] == [name]


def test_champion_policies_and_no_champion() -> None:
    better = CFG.model_copy(update={"champion": CFG.champion.model_copy(update={"policy": "better"})})
    tie = _champion(worse=False)
    assert decide(better, GOOD_METRICS, GOOD_ROBUSTNESS, tie)["failed"] == ["champion"]  # a tie is not better
    first = decide(CFG, GOOD_METRICS, GOOD_ROBUSTNESS, None)
    check = first["checks"][-1]
    assert first["passed"] and check["name"] == "champion" and "no production version" in check["detail"]
    broken = decide(CFG, GOOD_METRICS, GOOD_ROBUSTNESS, {"version": "4", "error": "cannot load model"})
    assert broken["failed"] == ["champion"] and "could not be scored" in broken["checks"][-1]["detail"]


def test_unmeasured_metrics_fail_and_none_turns_a_check_off() -> None:
    bare = {"ensemble": {"auc": 0.97, "video_auc": 0.98, "eer": 0.05, "accuracy": 0.93, "video_ece": float("nan")}}
    gate = decide(CFG.model_copy(update={"max_auc_drop": {"pgd": 0.5}}), bare, None, None)
    assert set(gate["failed"]) == {"max_ece", "max_auc_drop", "max_auc_drop:pgd", "max_drift_share"}
    assert all("not measur" in c["detail"] for c in gate["checks"] if not c["passed"])
    off = CFG.model_copy(update={"max_ece": None, "max_auc_drop_default": None, "max_drift_share": None})
    gate = decide(off, bare, None, None)
    assert gate["passed"] and {c["name"] for c in gate["checks"]} == {
        "min_auc", "min_video_auc", "max_eer", "min_accuracy", "champion"}


def test_robustness_reads_the_one_level_layout_too() -> None:
    levels = robustness_levels({"perturbed": {"jpeg_50": {"auc": 0.9, "auc_drop": 0.05}}})
    assert levels == {"jpeg_50": {"default": {"auc": 0.9, "auc_drop": 0.05}}}


def test_compare_references_and_table() -> None:
    from dfd.evaluation.compare import compare_scores, format_comparison, resolve_model_uri
    from dfd.platform.errors import DfdError

    assert resolve_model_uri("3", "m") == "models:/m/3"
    assert resolve_model_uri("models:/m@production", "m") == "models:/m@production"
    run_id = "0123456789abcdef0123456789abcdef"
    assert resolve_model_uri(run_id, "m") == f"runs:/{run_id}/ensemble"
    with pytest.raises(DfdError, match="not a model reference"):
        resolve_model_uri("latest", "m")
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 120)
    res = compare_scores(labels, _scores(rng, labels, 0.5), _scores(rng, labels, 3.0), n_boot=200, seed=0)
    auc = res["metrics"]["auc"]
    assert auc["a"]["ci_low"] <= auc["a"]["value"] <= auc["a"]["ci_high"] < auc["b"]["ci_low"]
    assert res["auc_test"]["p_value"] < 0.01
    lines = format_comparison(res, "A", "B")
    assert any(line.startswith("auc") for line in lines) and "p = " in lines[-2]
    assert res["delong"]["p_value"] < 0.01 and res["delong"]["diff"] == pytest.approx(res["auc_test"]["diff"])
    assert lines[-1].startswith("DeLong")
