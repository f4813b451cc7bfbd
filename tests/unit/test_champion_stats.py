"""Champion/challenger statistics: non-inferiority at a margin, the identity-cluster bootstrap, DeLong (fast vs the
definition), and the size of the test at the margin over 200 seeds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from dfd.evaluation.champion import champion_comparison, sample_videos
from dfd.evaluation.delong import delong_reference, delong_test
from dfd.evaluation.gate import champion_check
from dfd.evaluation.significance import (
    cluster_counts,
    identity_clusters,
    paired_auc_test,
    resample_indices,
    weighted_aucs,
)
from dfd.platform.config import AggregationParams, ChampionParams


def _binormal(rng: np.random.Generator, labels: np.ndarray, auc: float) -> np.ndarray:
    """Scores whose true AUC is exactly `auc`: N(d, 1) for fakes, N(0, 1) for reals, AUC = Phi(d / sqrt(2))."""
    return labels * np.sqrt(2) * norm.ppf(auc) + rng.normal(0, 1, len(labels))


def _summary(labels: np.ndarray, champ: np.ndarray, cand: np.ndarray, alpha: float = 0.05, n_boot: int = 500,
             seed: int = 0, clusters: np.ndarray | None = None) -> dict[str, Any]:
    """What `champion_summary` hands the gate, from real statistics on the given scores."""
    test = paired_auc_test(labels, champ, cand, n_boot, seed, 1 - alpha, clusters)
    dl = delong_test(labels, champ, cand, clusters)
    n_cl = len(np.unique(clusters)) if clusters is not None else len(labels)
    return {"version": "1", "run_id": "r", "level": "video", "n": len(labels), "n_videos": len(labels),
            "n_clusters": n_cl, "test": test.to_dict(), "delong": dl.to_dict()}


def test_weighted_aucs_match_sklearn_and_repeated_rows() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    scores = np.round(_binormal(rng, labels, 0.8), 1)  # rounding makes ties
    assert weighted_aucs(labels, scores, np.ones((1, 120)))[0] == pytest.approx(roc_auc_score(labels, scores))
    counts = cluster_counts(labels, rng.integers(0, 30, 120), 5, seed=1)
    for c, idx in zip(counts, resample_indices(labels, 5, 1, None), strict=True):
        rows = np.repeat(np.arange(120), c)  # weights = that many copies of each row
        assert weighted_aucs(labels, scores, c[None])[0] == pytest.approx(roc_auc_score(labels[rows], scores[rows]))
        assert len(idx) == 120


@pytest.mark.parametrize("clustered", [False, True])
def test_fast_delong_matches_the_definition(clustered: bool) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 70)
    a = np.round(_binormal(rng, labels, 0.75), 1)
    b = np.round(0.6 * a + _binormal(rng, labels, 0.8), 1)  # correlated with a, with ties
    clusters = rng.integers(0, 15, 70) if clustered else None
    fast, slow = delong_test(labels, a, b, clusters), delong_reference(labels, a, b, clusters)
    assert fast.auc_a == pytest.approx(roc_auc_score(labels, a)) and fast.auc_b == pytest.approx(slow.auc_b)
    assert fast.se == pytest.approx(slow.se, rel=1e-9) and fast.p_value == pytest.approx(slow.p_value, rel=1e-9)
    assert fast.se > 0 and fast.n_clusters == (15 if clustered else 70)


def test_delong_agrees_with_the_bootstrap_on_a_large_sample() -> None:
    rng = np.random.default_rng(11)
    labels = np.repeat([0, 1], 1500)
    latent = rng.normal(0, 1, 3000)  # the two scorers share most of their errors, as two retrains do
    a = labels * 1.2 + latent + rng.normal(0, 0.6, 3000)
    b = labels * 1.35 + latent + rng.normal(0, 0.6, 3000)
    dl = delong_test(labels, a, b)
    boot = paired_auc_test(labels, a, b, n_boot=1000, seed=0)
    boot_se = (boot.ci_high - boot.ci_low) / (2 * norm.ppf(0.975))
    assert boot_se == pytest.approx(dl.se, rel=0.15)
    assert dl.lower(0.05) == pytest.approx(boot.lower, abs=0.25 * dl.se)
    assert dl.p_value < 0.05 and boot.p_value < 0.05


def test_identity_clusters_join_a_fake_with_both_of_its_people() -> None:
    ids = np.array(["004", "004_982", "982", None, "519", "519_515", "id7"], dtype=object)
    samples = np.array(["r004", "f004", "r982", "x", "r519", "f519", "r7"])
    c = identity_clusters(samples, ids)
    assert c[0] == c[1] == c[2] and c[4] == c[5]
    assert len({c[0], c[3], c[4], c[6]}) == 4  # no identity: the sample alone


def test_cluster_bootstrap_keeps_mixed_clusters_whole_and_widens_the_interval() -> None:
    rng = np.random.default_rng(5)
    n_id = 40
    person = np.repeat(np.arange(n_id), 10)  # 10 samples per person, half real, half fake: every cluster mixed
    labels = np.tile(np.repeat([0, 1], 5), n_id)
    shift = rng.normal(0, 1.5, n_id)[person]  # a person's samples share a score shift, for both models ...
    gain = rng.normal(0, 0.8, n_id)[person]  # ... and the candidate is better on some people, worse on others
    a = labels + shift + rng.normal(0, 0.5, 400)
    b = labels * (1 + gain) + shift + rng.normal(0, 0.5, 400)
    for c in cluster_counts(labels, person, 30, seed=2):
        drawn = np.repeat(person, c)
        assert all(np.sum(drawn == p) % 10 == 0 for p in np.unique(drawn))  # whole clusters
        assert set(np.repeat(labels, c)) == {0, 1}
    naive = paired_auc_test(labels, a, b, 400, 0)
    clustered = paired_auc_test(labels, a, b, 400, 0, groups=person)
    assert clustered.n_clusters == n_id and naive.n_clusters == 400
    assert clustered.ci_high - clustered.ci_low > 1.3 * (naive.ci_high - naive.ci_low)
    assert delong_test(labels, a, b, person).se > 1.3 * delong_test(labels, a, b).se


def test_a_candidate_worse_by_0_03_on_a_small_sample_now_fails() -> None:
    old_passed, new_failed = 0, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        labels = np.repeat([0, 1], 30)  # 60 videos: the size of a champion sample today
        champ, cand = _binormal(rng, labels, 0.90), _binormal(rng, labels, 0.87)
        s = _summary(labels, champ, cand, seed=seed)
        old_passed += not (s["test"]["p_value"] < 0.05 and s["test"]["diff"] < 0)  # the rule this replaces
        check = champion_check(s, "not_worse", 0.05, 0.01)
        new_failed += not check.passed
        assert check.value == pytest.approx(s["test"]["lower"])
    assert old_passed >= 15  # the two-sided test rarely sees 0.03 on 60 videos ...
    assert new_failed == 20  # ... and non-inferiority never accepts what it cannot show


def test_an_equal_candidate_on_a_large_sample_passes_and_a_small_one_is_too_few() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 2000)
    latent = rng.normal(0, 1, 4000)
    champ = labels * 2 + latent + rng.normal(0, 0.2, 4000)  # two retrains: errors mostly shared
    cand = labels * 2 + latent + rng.normal(0, 0.2, 4000)
    check = champion_check(_summary(labels, champ, cand, n_boot=300), "not_worse", 0.05, 0.01)
    assert check.passed and check.value > -0.01 and "DeLong p=" in check.detail and "4000 videos" in check.detail
    small = np.r_[np.arange(0, 8), np.arange(2000, 2008)]
    few = champion_check(_summary(labels[small], champ[small], cand[small]), "not_worse", 0.05, 0.01)
    assert not few.passed and "too few to decide" in few.detail and "clusters would be needed" in few.detail
    needed = int(few.detail.split("about ")[1].split(" clusters")[0])
    assert needed > 16  # more than it had
    assert not champion_check(_summary(labels, champ, cand, n_boot=300), "better", 0.05, 0.01).passed


def test_size_at_the_margin_over_200_seeds() -> None:
    """A candidate exactly `margin` worse passes at most alpha + 0.04 of the time (binomial sd ~0.015 at 200)."""
    alpha, margin, passes = 0.05, 0.05, 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        labels = np.repeat([0, 1], 100)
        champ, cand = _binormal(rng, labels, 0.85), _binormal(rng, labels, 0.85 - margin)
        t = paired_auc_test(labels, champ, cand, n_boot=400, seed=seed, confidence=1 - alpha)
        passes += t.lower > -margin
    assert passes / 200 <= alpha + 0.04
    assert passes > 0  # the bound is not so loose that nothing ever passes at the boundary


def test_champion_comparison_at_the_video_level_with_counts() -> None:
    rng = np.random.default_rng(4)
    rows = []
    for v in range(24):
        label, person = v % 2, f"p{v // 4}"
        for f in range(3):
            rows.append({"sample_id": f"v{v}", "frame": f, "label": label, "identity": person, "media": "video",
                         "prob": float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2), 0, 1)),
                         "champion": float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2), 0, 1))})
    frames = pd.DataFrame(rows)
    picked = sample_videos(frames, 30, seed=0)
    assert len(picked) == 30 and picked.groupby("sample_id").size().eq(3).all()  # whole videos only
    assert set(picked["label"]) == {0, 1}
    out = champion_comparison(frames, ChampionParams(bootstrap=200), AggregationParams())
    assert out["level"] == "video" and out["n"] == 72 and out["n_videos"] == 24 and out["n_clusters"] == 6
    assert out["test"]["n_clusters"] == 6 and out["delong"]["n_clusters"] == 6 and out["margin"] == 0.01
    images = frames.drop_duplicates("sample_id").assign(media="image")
    one = champion_comparison(images.iloc[:5], ChampionParams(bootstrap=200), AggregationParams())
    assert one["level"] == "frame" and "too_few" in one and "test" not in one
    assert not champion_check({"version": "1", **one}, "not_worse", 0.05, 0.01).passed
