"""Face tracks across sampled frames, the file rules, and the abstain reasons (`dfd.serving.tracks`), on face lists
shaped like the extraction's (no model: these are the rules themselves)."""

from __future__ import annotations

import numpy as np
import pytest

from dfd.data.face_detect import Box
from dfd.platform.config import AggregationParams, ServeParams
from dfd.serving.tracks import FaceTracker, assign_tracks, drop_small, judge, timeline

MEAN = AggregationParams(method="mean")


def face(frame: int, x: float, side: float, p: float, y: float = 50.0) -> dict:
    return {"frame": frame, "box": [x, y, x + side, y + side], "p_fake": p}


def test_tracker_bridges_a_missed_frame_and_a_jump_but_not_a_long_gap() -> None:
    """A face that moved further than IoU tolerates between sampled frames, or was missed on one, keeps its track;
    one gone for more than `max_gap` sampled frames starts a new one; a face of another size nearby does not join."""
    t = FaceTracker(max_gap=1)
    assert t.update(0, [Box(0, 0, 100, 100), Box(300, 0, 400, 100)]) == [0, 1]
    # 45 px to the right: IoU 0.38 with the last box; the second face is missed on this frame.
    assert t.update(1, [Box(45, 0, 145, 100)]) == [0]
    # The second face again after one missed frame, having moved 80 px (IoU 0.11 < 0.3): bridged by nearness.
    assert t.update(2, [Box(45, 0, 145, 100), Box(380, 0, 480, 100)]) == [0, 1]
    # Gone for two sampled frames (> max_gap=1): a new track at the same place.
    t.update(3, [Box(45, 0, 145, 100)])
    t.update(4, [Box(45, 0, 145, 100)])
    assert t.update(5, [Box(45, 0, 145, 100), Box(380, 0, 480, 100)]) == [0, 2]
    # A face twice the size at the same centre is another face, not the track.
    assert t.update(6, [Box(-5, -50, 195, 150)]) == [3]


def test_worst_track_finds_the_one_fake_face_that_largest_face_averages_away() -> None:
    sampled = list(range(6))
    found = [f for i in sampled for f in (face(i, 0, 120, 0.1), face(i, 300, 80, 0.9))]
    assign_tracks(found, sampled, max_gap=2)
    assert sorted({f["track"] for f in found}) == [0, 1]
    cfg, limits = {"frames_per_video": 6, "all_faces": False}, ServeParams()
    largest = judge(found, sampled, True, "largest_face", MEAN, limits, cfg)
    worst = judge(found, sampled, True, "worst_track", MEAN, limits, cfg)
    assert largest.p_fake == pytest.approx(0.1) and worst.p_fake == pytest.approx(0.9)
    assert {t["track"]: t["p_fake"] for t in worst.tracks} == pytest.approx({0: 0.1, 1: 0.9})
    assert all(f["box"][0] == 300 for f in worst.used) and len(worst.used) == 6
    # A model trained on every face pools them all under largest_face: the mean of the two.
    pooled = judge(found, sampled, True, "largest_face", MEAN, limits, {**cfg, "all_faces": True})
    assert pooled.p_fake == pytest.approx(0.5)
    line = timeline(worst.tracks, [*sampled, 6], fps=10.0)
    assert line[0] == {"frame": 0, "t": 0.0, "p_fake": {"0": 0.1, "1": 0.9}}
    assert line[-1] == {"frame": 6, "t": 0.6, "p_fake": {}}  # a sampled frame without a face


def test_abstains_on_too_few_frames_and_small_faces() -> None:
    limits = ServeParams(min_frames=3, min_face_px=40)
    cfg = {"frames_per_video": 32, "all_faces": False}
    two = [face(0, 0, 100, 0.8), face(5, 0, 100, 0.8)]
    assign_tracks(two, list(range(8)), 2)
    v = judge(two, list(range(8)), True, "largest_face", MEAN, limits, cfg)
    assert v.p_fake is None and v.reason == "too_few_frames" and "2 of 8" in v.detail
    # Never more frames than the model samples: a model evaluated on 2 frames a clip judges 2-frame clips.
    assert judge(two, list(range(8)), True, "largest_face", MEAN, limits, {**cfg, "frames_per_video": 2}).p_fake
    # An image needs its one frame; under worst_track a 1-frame bystander track does not count.
    assert judge(two[:1], [0], False, "worst_track", MEAN, limits, cfg).p_fake == pytest.approx(0.8)
    three = [face(i, 0, 100, 0.2) for i in range(3)] + [face(1, 300, 100, 0.99)]
    assign_tracks(three, [0, 1, 2], 2)
    w = judge(three, [0, 1, 2], True, "worst_track", MEAN, limits, cfg)
    assert w.p_fake == pytest.approx(0.2)
    assert [t["reason"] for t in w.tracks] == [None, "too_few_frames"]
    kept, small = drop_small([face(0, 0, 39, 0.5), face(0, 100, 40, 0.5)], 40)
    assert small == 1 and [f["box"][0] for f in kept] == [100]
    assert np.isfinite(w.p_fake)
