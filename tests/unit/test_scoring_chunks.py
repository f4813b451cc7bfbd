"""`MediaScorer.score_found`: crops scored in chunks with a cancel check between them, each member's score kept per
face, and member agreement judged on the faces the file's verdict used (worst_track: the worst track only).

The predictor reads its scores off the crops' pixels (channel 0: the ensemble, channel 1: member `b`; member `a`
equals the ensemble), so the right answer is known without a model; everything after it is the served code."""

from __future__ import annotations

import numpy as np
import pytest

from dfd.platform.config import ServeParams
from dfd.serving.media_scoring import CROP_CHUNK, MediaResult, MediaScorer

SPEC = {"threshold": 0.5, "val_eer_threshold": 0.5, "aggregation": {"method": "mean"}, "weights": {"a": 0.5, "b": 0.5},
        "fusion": {"members": ["a", "b"]}, "agreement_threshold": 0.8}


class PixelEnsemble:
    """Scores written into the crops: what an `EnsemblePredictor` returns, one call per chunk (counted)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score_with_members(self, crops: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        self.calls.append(len(crops))
        fused, b = crops[:, 0, 0, 0] / 255.0, crops[:, 0, 0, 1] / 255.0
        return fused, {"a": fused, "b": b}

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        raise AssertionError("score_with_members gives the scores and the members' in one pass")


def _faces(frames: int) -> list[dict]:
    """Two faces a frame: a large one on the left (P 0.2, member b 0.0), a smaller one on the right (P 0.9, b 0.6)."""
    def crop(p: float, b: float) -> np.ndarray:
        c = np.zeros((8, 8, 3), np.uint8)
        c[..., 0], c[..., 1] = round(p * 255), round(b * 255)
        return c

    return [f for i in range(frames) for f in (
        {"frame": i, "box": [0, 50, 120, 170], "crop": crop(0.2, 0.0)},
        {"frame": i, "box": [300, 50, 380, 130], "crop": crop(0.9, 0.6)})]


def _result(frames: int) -> MediaResult:
    res = MediaResult("clip.mp4", frames=frames, kind="video")
    res.timeline = [{"frame": i} for i in range(frames)]
    return res


def test_chunks_cancel_checks_and_agreement_on_the_used_track() -> None:
    frames = 20  # 40 crops: chunks of 16, 16, 8
    predictor, checks = PixelEnsemble(), []
    scorer = MediaScorer(predictor, SPEC, {"frames_per_video": frames})
    res = scorer.score_found(_faces(frames), _result(frames), check_cancel=lambda: checks.append(1),
                             limits=ServeParams(file_rule="worst_track"))
    assert predictor.calls == [CROP_CHUNK, CROP_CHUNK, 2 * frames - 2 * CROP_CHUNK]
    assert len(checks) == len(predictor.calls)  # one cancel check before each chunk
    assert res.p_fake == pytest.approx(0.9, abs=0.003) and res.label == "fake" and res.tracks == 2
    # On the worst track both members say fake (a 0.9, b 0.6): agreement 1. Over every face, b would say real
    # (mean 0.3) and the agreement would be 0.5: uncertain.
    assert res.agreement == 1.0 and res.status == "scored"
    assert all(set(f["members"]) == {"a", "b"} for f in res.crops) and len(res.crops) == frames
    # Under largest_face the left face is used (P 0.2, real; b 0.0 real): the members agree again.
    other = scorer.score_found(_faces(frames), _result(frames), limits=ServeParams(file_rule="largest_face"))
    assert other.label == "real" and other.agreement == 1.0


def test_a_cancel_between_chunks_stops_scoring() -> None:
    predictor = PixelEnsemble()
    scorer = MediaScorer(predictor, SPEC, {"frames_per_video": 20})

    def cancel() -> None:
        if predictor.calls:
            raise TimeoutError("cancelled")

    with pytest.raises(TimeoutError):
        scorer.score_found(_faces(20), _result(20), check_cancel=cancel)
    assert predictor.calls == [CROP_CHUNK]  # the first chunk only
