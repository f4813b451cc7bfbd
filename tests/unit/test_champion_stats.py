"""Champion/challenger statistics: non-inferiority at a margin, the identity-cluster bootstrap, DeLong (fast vs the
definition, and vs DeLong's variance written from the definition in plain numpy), the size of the test at the margin
and at 20 clusters per class over 300 seeds, and what is too few to decide."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t
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
    persons = [["004"], ["004", "982"], ["982"], [], ["519"], ["519", "515"], ["id7"], ["subject_01"],
               ["subject_02"], np.array(["dfdc_train_part_0_abc"], dtype=object)]
    samples = ["r004", "f004", "r982", "x", "r519", "f519", "r7", "s1", "s2", "d"]
    c = identity_clusters(persons, samples)
    assert c[0] == c[1] == c[2] and c[4] == c[5]
    assert len({c[0], c[3], c[4], c[6], c[7], c[8], c[9]}) == 7  # no persons: the sample alone; names never split
    frames = identity_clusters([["a"], ["a"], [], []], ["v1", "v1", "v2", "v2"])  # the frames of a video together
    assert frames[0] == frames[1] and frames[2] == frames[3] and frames[0] != frames[2]


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
    assert not few.passed and "too few to decide" in few.detail and "videos would be needed" in few.detail
    needed = int(few.detail.split("about ")[1].split(" videos")[0])
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
            rows.append({"sample_id": f"v{v}", "frame": f, "label": label, "persons": [person], "media": "video",
                         "prob": float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2), 0, 1)),
                         "champion": float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2), 0, 1))})
    frames = pd.DataFrame(rows)
    picked = sample_videos(frames, 10, seed=0)
    assert len(picked) == 30 and picked.groupby("sample_id").size().eq(3).all()  # 10 whole videos
    assert set(picked["label"]) == {0, 1}
    few = ChampionParams(bootstrap=200, min_clusters_per_class=2)
    out = champion_comparison(frames, few, AggregationParams())
    assert out["level"] == "video" and out["n"] == 72 and out["n_videos"] == 24 and out["n_clusters"] == 6
    assert out["test"]["n_clusters"] == 6 and out["delong"]["n_clusters"] == 6 and out["margin"] == 0.01
    assert out["delong"]["dof"] == 5  # t on G - 1: 6 clusters hold each class
    images = frames.drop_duplicates("sample_id").assign(media="image")
    one = champion_comparison(images.iloc[:5], few, AggregationParams())
    assert one["level"] == "frame" and "too_few" in one and "test" not in one
    assert not champion_check({"version": "1", **one}, "not_worse", 0.05, 0.01).passed
    # The default asks for 20 clusters of each class, and says how many videos that would take.
    default = champion_comparison(frames, ChampionParams(bootstrap=200), AggregationParams())
    assert "test" not in default and default["videos_needed"] == 80  # 24 videos held 6 clusters of each class
    check = champion_check({"version": "1", **default}, "not_worse", 0.05, 0.01)
    assert not check.passed and "too few to decide" in check.detail and "about 80 videos" in check.detail


def _clustered(seed: int, n_clusters: int, per_class: int, auc_a: float, auc_b: float,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Videos of `n_clusters` people, each with `per_class` real and fake videos: a person's videos share a score
    shift (both models) and each model is better on some people than on others (what makes clusters matter)."""
    rng = np.random.default_rng(seed)
    cl = np.repeat(np.arange(n_clusters), 2 * per_class)
    y = np.tile(np.repeat([0, 1], per_class), n_clusters)
    shift = rng.normal(0, 0.5, n_clusters)[cl]
    da, db = np.sqrt(2) * norm.ppf(auc_a), np.sqrt(2) * norm.ppf(auc_b)
    a = y * (da + rng.normal(0, 0.3, n_clusters)[cl]) + shift + rng.normal(0, 1, len(y))
    b = y * (db + rng.normal(0, 0.3, n_clusters)[cl]) + shift + rng.normal(0, 1, len(y))
    return y, a, b, cl


def test_false_better_rate_at_20_clusters_per_class_over_300_seeds() -> None:
    """True difference 0, 20 mixed clusters: the one-sided 95% bound is above 0 (a false "better") in at most
    alpha + 0.035 of 300 seeds (binomial sd ~0.013), for the bootstrap and for DeLong (t on 19 dof); and the
    bootstrap's one-sided upper bound, which `not_worse` reads as "shown worse" below -margin, is below 0 (a false
    "worse" at a bound of 0) as rarely."""
    alpha, boot, delong, worse = 0.05, 0, 0, 0
    for seed in range(300):
        y, a, b, cl = _clustered(seed, 20, 2, 0.85, 0.85)
        t = paired_auc_test(y, a, b, n_boot=300, seed=seed, confidence=1 - alpha, groups=cl)
        boot += t.lower > 0
        worse += t.upper < 0
        delong += delong_test(y, a, b, cl).lower(alpha) > 0
    assert boot / 300 <= alpha + 0.035 and delong / 300 <= alpha + 0.035 and worse / 300 <= alpha + 0.035
    assert boot > 0 and delong > 0 and worse > 0  # not so conservative that nothing is ever called better/worse


def _frames(y: np.ndarray, champ: np.ndarray, cand: np.ndarray, cl: np.ndarray) -> pd.DataFrame:
    """Scored stills as the register stage hands them to `champion_comparison` (one frame each)."""
    return pd.DataFrame({"sample_id": [f"v{i}" for i in range(len(y))], "frame": 0, "label": y, "media": "image",
                         "persons": [[f"p{c}"] for c in cl], "prob": cand, "champion": champ})


def test_a_large_loss_is_shown_worse_on_25_clusters_where_a_tie_is_too_few() -> None:
    """50 stills in 25 clusters: far too few for a margin of 0.01 (a tie is "too few to decide"), yet a candidate at
    AUC 0.60 against a champion at 0.95 is decided: its one-sided upper bound is below -0.01 in each of 20 seeds."""
    cfg = ChampionParams(bootstrap=300)  # margin 0.01 and 20 clusters per class: the defaults
    for seed in range(20):
        y, champ, cand, cl = _clustered(seed, 25, 1, 0.95, 0.60)
        out = champion_comparison(_frames(y, champ, cand, cl), cfg, AggregationParams())
        check = champion_check({"version": "1", **out}, "not_worse", cfg.alpha, cfg.margin)
        assert out["n_clusters_per_class"] == {"real": 25, "fake": 25} and out["test"]["upper"] < -0.01
        assert not check.passed and "worse than the margin 0.01 allows, shown" in check.detail
        assert "too few" not in check.detail
    y, champ, cand, cl = _clustered(0, 25, 1, 0.95, 0.95)
    out = champion_comparison(_frames(y, champ, cand, cl), cfg, AggregationParams())
    check = champion_check({"version": "1", **out}, "not_worse", cfg.alpha, cfg.margin)
    assert not check.passed and "too few to decide: interval half-width" in check.detail


def test_one_big_cluster_beside_pure_ones_is_resampled_and_not_decided() -> None:
    rng = np.random.default_rng(8)
    big = 120  # one mixed cluster: half of the videos
    labels = np.r_[np.tile([0, 1], big // 2), np.zeros(30, int), np.ones(30, int)]
    clusters = np.r_[np.zeros(big, int), np.repeat(np.arange(1, 6), 6), np.repeat(np.arange(6, 11), 6)]
    counts = cluster_counts(labels, clusters, 500, seed=0)
    assert np.ptp(counts[:, 0]) > 0  # the big cluster is drawn 0, 1, 2... times: its variance is counted
    assert ((counts * labels).sum(1) > 0).all() and ((counts * (1 - labels)).sum(1) > 0).all()  # both classes
    frames = pd.DataFrame({"sample_id": [f"v{i}" for i in range(len(labels))], "frame": 0, "label": labels,
                           "media": "video", "persons": [[f"p{c}"] for c in clusters],
                           "prob": _binormal(rng, labels, 0.9), "champion": _binormal(rng, labels, 0.9)})
    out = champion_comparison(frames, ChampionParams(bootstrap=200, policy="better"), AggregationParams())
    check = champion_check({"version": "1", **out}, "better", 0.05, 0.01)
    assert "test" not in out and out["n_clusters_per_class"] == {"real": 6, "fake": 6}
    assert not check.passed and "too few to decide" in check.detail


def test_identical_resamples_give_no_p_value() -> None:
    labels = np.tile([0, 1], 20)
    a = np.linspace(0, 1, 40)
    one = paired_auc_test(labels, a, a + 0.5 * labels, n_boot=200, seed=0, groups=np.zeros(40, int))
    assert np.isnan(one.p_value) and "no p-value" in one.note  # one cluster: every resample is the whole set
    assert delong_test(labels, a, a).p_value != delong_test(labels, a, a).p_value  # se 0: NaN, not 1


@pytest.mark.parametrize(("champ_auc", "cand_auc", "policy", "passes", "words"), [
    (0.95, 0.92, "not_worse", False, "worse than the margin"),
    (0.92, 0.95, "better", True, "better than the champion")])
def test_4000_videos_decide_a_difference_of_0_03(champ_auc: float, cand_auc: float, policy: str, passes: bool,
                                                 words: str) -> None:
    rng = np.random.default_rng(21)
    n_cl = 1000  # 4,000 videos of 1,000 people (2 real, 2 fake each); the models share most of their errors
    cl = np.repeat(np.arange(n_cl), 4)
    y = np.tile([0, 0, 1, 1], n_cl)
    shared = rng.normal(0, 0.8, 4 * n_cl) + rng.normal(0, 0.3, n_cl)[cl]
    noise = np.sqrt(1 - 0.8 ** 2)
    champ = y * np.sqrt(2) * norm.ppf(champ_auc) + shared + rng.normal(0, noise, 4 * n_cl)
    cand = y * np.sqrt(2) * norm.ppf(cand_auc) + shared + rng.normal(0, noise, 4 * n_cl)
    frames = pd.DataFrame({"sample_id": [f"v{i}" for i in range(4 * n_cl)], "frame": 0, "label": y,
                           "media": "video", "persons": [[f"p{c}"] for c in cl], "prob": cand, "champion": champ})
    cfg = ChampionParams(policy=policy, bootstrap=500)
    out = champion_comparison(frames, cfg, AggregationParams())
    check = champion_check({"version": "1", **out}, policy, cfg.alpha, cfg.margin)
    assert out["n_videos"] == 4000 and check.passed is passes and words in check.detail
    assert "too few" not in check.detail


def test_delong_variance_matches_the_definition_in_plain_numpy() -> None:
    """DeLong et al. (1988), written from the paper's definitions with no code shared with dfd: the placements
    V10(X_i) = mean_j psi(X_i, Y_j), V01(Y_j) = mean_i psi(X_i, Y_j), S10/S01 their sample covariances, and
    var(AUC_b - AUC_a) = c' (S10 / m + S01 / n) c with c = (-1, 1)."""
    rng = np.random.default_rng(17)
    labels = rng.integers(0, 2, 90)
    a = np.round(_binormal(rng, labels, 0.8), 1)
    b = np.round(0.5 * a + _binormal(rng, labels, 0.85), 1)
    x = np.vstack([a, b])[:, labels == 1]  # fakes (positives), per scorer
    z = np.vstack([a, b])[:, labels == 0]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])  # (2, m, n)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    m, n = v10.shape[1], v01.shape[1]
    s = np.cov(v10) / m + np.cov(v01) / n
    c = np.array([-1.0, 1.0])
    se = float(np.sqrt(c @ s @ c))
    got = delong_test(labels, a, b)
    assert got.auc_a == pytest.approx(psi[0].mean()) and got.se == pytest.approx(se, rel=1e-9)
    df = min(m, n) - 1  # unclustered: every sample its own cluster
    assert got.dof == df and got.lower(0.05) == pytest.approx(got.diff - student_t.ppf(0.95, df) * se)


def test_a_champion_split_by_another_scheme_is_skipped_with_the_reason() -> None:
    from tasks.register import split_scheme_skip

    old = {"version": "4", "run_id": "r", "tags": {}}  # registered before split schemes were recorded
    same = {"version": "5", "run_id": "r", "tags": {"split_scheme": "persons-1"}}
    why = split_scheme_skip(old, "persons-1")
    assert why and "may have trained on this test split" in why and "v4" in why
    assert split_scheme_skip(same, "persons-1") is None
    check = champion_check({"version": "4", "skipped": why}, "not_worse", 0.05, 0.01)
    assert check.passed and check.detail.startswith("skipped: ") and check.value is None
