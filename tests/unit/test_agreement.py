"""Member agreement: which members count, calibrated labels at 0.5, the share of uncertain files (against a known
answer), the gate check, and the status every kind of result gets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dfd.evaluation.agreement import (
    agreement_summary,
    counted_members,
    file_agreement,
    file_agreements,
    member_weights,
)
from dfd.evaluation.gate import decide
from dfd.platform.config import AggregationParams, GateParams
from dfd.serving.media_scoring import MediaResult, status_of

MEAN = AggregationParams(method="mean")


def _spec(weights: dict[str, float], calibration: dict[str, list[float]] | None = None) -> dict:
    members = list(weights)
    return {"members": members, "weights": weights, "fusion": {"method": "weighted_average", "members": members},
            "calibration": calibration or {m: [1.0, 0.0] for m in members}, "aggregation": MEAN.model_dump(),
            "agreement_threshold": 0.8}


def test_zero_weight_members_are_left_out_and_negative_stacking_shares_counted() -> None:
    assert counted_members(_spec({"a": 0.6, "b": 0.0, "c": 0.4})) == ["a", "c"]
    assert counted_members(_spec({"a": 0.7, "b": -0.3, "c": 1e-12})) == ["a", "b"]  # 1e-12: a normalised zero
    assert member_weights(_spec({"a": 1.4, "b": -0.6, "c": 0.0})) == pytest.approx({"a": 0.7, "b": -0.3})


def test_each_member_counts_with_its_share_and_a_negative_share_counts_inverted() -> None:
    # a says fake (0.8), b says fake (0.7), c says real (0.2); the ensemble says fake.
    scores = {"a": np.array([0.8]), "b": np.array([0.7]), "c": np.array([0.2])}
    assert file_agreement(scores, fake=True, cfg=MEAN) == pytest.approx(2 / 3)  # no weights: one vote each
    assert file_agreement(scores, True, MEAN, {"a": 0.6, "b": 0.3, "c": 0.1}) == pytest.approx(0.9)
    # A tiny share that disagrees barely moves the agreement; one vote each it would cost a third.
    assert file_agreement(scores, True, MEAN, {"a": 0.5, "b": 0.49, "c": 0.01}) == pytest.approx(0.99)
    # c with a negative coefficient: its P(fake) pushes the fusion towards real, so its "real" backs "fake".
    assert file_agreement(scores, True, MEAN, {"a": 0.5, "b": 0.3, "c": -0.2}) == pytest.approx(1.0)
    assert file_agreement(scores, False, MEAN, {"a": 0.5, "b": 0.3, "c": -0.2}) == pytest.approx(0.0)
    frames = pd.DataFrame({"sample_id": ["v"], "label": [1], "prob": [0.9], **{m: s for m, s in scores.items()}})
    files = file_agreements(frames, _spec({"a": 0.5, "b": 0.3, "c": -0.2}), threshold=0.5)
    assert files["agreement"].tolist() == pytest.approx([1.0])  # the frame-table path gives the same answer


def test_a_member_votes_with_its_aggregated_calibrated_score() -> None:
    # Member b's raw frames average 0.6 (fake at 0.5), but its calibration shifts the logit by -1: 0.35, real.
    scores = {"a": np.array([0.9, 0.7]), "b": np.array([0.6, 0.6]), "c": np.array([0.2, 0.9])}
    assert file_agreement(scores, fake=True, cfg=MEAN) == pytest.approx(1.0)  # c: mean 0.55
    assert file_agreement(scores, fake=True, cfg=AggregationParams(method="median")) == pytest.approx(1.0)
    assert file_agreement({}, fake=True, cfg=MEAN) is None
    frames = pd.DataFrame({"sample_id": ["v1", "v1"], "label": [1, 1], "prob": [0.9, 0.8],
                           "a": scores["a"], "b": scores["b"], "c": scores["c"]})
    spec = _spec({"a": 0.4, "b": 0.3, "c": 0.3}, {"a": [1.0, 0.0], "b": [1.0, -1.0], "c": [1.0, 0.0]})
    files = file_agreements(frames, spec, threshold=0.5)
    assert files["agreement"].tolist() == pytest.approx([0.7])  # b (share 0.3) disagrees once calibrated


def test_uncertain_share_matches_the_binomial_answer_on_simulated_videos() -> None:
    """Four counted members (shares 0.3, 0.3, 0.25, 0.15) each agree with the (correct) ensemble on a video with
    probability 0.9, independently; a fifth member with zero weight always disagrees. At threshold 0.8 a video is
    uncertain when m0, m1 or m2 disagrees (each holds more than 0.2), or m3 disagrees together with another:
    P = 1 - 0.9**3 (m0-m2 all agree, whatever m3 does) = 0.271. Videos of 3-8 correlated frames whose noise never
    crosses 0.5."""
    rng = np.random.default_rng(7)
    n_videos, p_agree = 3000, 0.9
    lengths = rng.integers(3, 9, n_videos)
    label = rng.integers(0, 2, n_videos)
    agrees = rng.random((n_videos, 4)) < p_agree  # each member's vote on each video
    vote = np.where(agrees, label[:, None], 1 - label[:, None])  # (videos, members)
    rows = np.repeat(np.arange(n_videos), lengths)
    centre = np.where(vote == 1, 0.75, 0.25)[rows]  # each member's video-level score
    member = np.clip(centre + rng.uniform(-0.2, 0.2, centre.shape), 0.01, 0.99)  # correlated frames
    frames = pd.DataFrame({"sample_id": [f"id{v // 3:04d}/clip{v:05d}" for v in rows], "label": label[rows],
                           "prob": np.where(label[rows] == 1, 0.8, 0.2),
                           **{f"m{j}": member[:, j] for j in range(4)},
                           "dissenter": np.where(label[rows] == 1, 0.1, 0.9)})
    spec = _spec({"m0": 0.3, "m1": 0.3, "m2": 0.25, "m3": 0.15, "dissenter": 0.0})
    out = agreement_summary(frames, spec, threshold=0.5)
    expected = 1 - p_agree ** 3
    se = np.sqrt(expected * (1 - expected) / n_videos)  # 0.0087
    assert out["files"] == n_videos and out["members"] == ["m0", "m1", "m2", "m3"]
    assert out["uncertain_share"] == pytest.approx(expected, abs=4 * se)
    assert out["mean_agreement"] == pytest.approx(p_agree, abs=0.01)
    assert out["accuracy_agreed"] == 1.0 and out["accuracy_uncertain"] == 1.0  # the ensemble is right throughout
    # Counted at a quarter of the fusion, the dissenter would make every video uncertain (0.8 of the weight at best).
    assert agreement_summary(frames, {**spec, "weights": {**spec["weights"], "dissenter": 0.34}},
                             0.5)["uncertain_share"] == 1.0


def test_the_ensembles_label_is_judged_at_its_own_threshold() -> None:
    frames = pd.DataFrame({"sample_id": ["a", "b"], "label": [1, 0], "prob": [0.3, 0.3],
                           "m0": [0.9, 0.1], "m1": [0.8, 0.2]})
    spec = _spec({"m0": 0.5, "m1": 0.5})
    low = file_agreements(frames, spec, threshold=0.25).set_index("sample_id")["agreement"]  # both called fake
    assert low.to_dict() == {"a": 1.0, "b": 0.0}
    high = file_agreements(frames, spec, threshold=0.5).set_index("sample_id")["agreement"]  # both called real
    assert high.to_dict() == {"a": 0.0, "b": 1.0}


def test_gate_bounds_the_uncertain_share_only_when_asked() -> None:
    metrics = {"ensemble": {}, "agreement": {"threshold": 0.8, "uncertain_share": 0.3}}
    off = GateParams(min_auc=None, min_video_auc=None, max_eer=None, min_accuracy=None, max_ece=None,
                     max_auc_drop_default=None, max_drift_share=None)
    assert "max_uncertain_share" not in [c["name"] for c in decide(off, metrics, None, None)["checks"]]
    on = off.model_copy(update={"max_uncertain_share": 0.25})
    check = next(c for c in decide(on, metrics, None, None)["checks"] if c["name"] == "max_uncertain_share")
    assert not check["passed"] and check["value"] == 0.3 and "below 0.8" in check["detail"]
    loose = off.model_copy(update={"max_uncertain_share": 0.5})
    assert next(c for c in decide(loose, metrics, None, None)["checks"] if c["name"] == "max_uncertain_share")["passed"]
    unmeasured = next(c for c in decide(on, {"ensemble": {}}, None, None)["checks"]
                      if c["name"] == "max_uncertain_share")
    assert not unmeasured["passed"] and "not measured" in unmeasured["detail"]
    with pytest.raises(ValueError):
        GateParams(max_uncertain_share=1.5)


@pytest.mark.parametrize(("reason", "scored", "status"), [
    (None, True, "scored"), ("members_disagree", True, "uncertain"), ("no_face", False, "not_applicable"),
    ("unreadable", False, "error"), ("too_large", False, "error"), ("empty", False, "error")])
def test_every_result_has_one_status(reason: str | None, scored: bool, status: str) -> None:
    assert status_of(reason, scored) == status
    res = MediaResult("x.png", p_fake=0.4 if scored else None, label="real" if scored else None, reason=reason)
    assert res.row()["status"] == status and "agreement" in res.row()
