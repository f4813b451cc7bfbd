"""Scoring media files with the ensemble: read, sample frames, extract faces as the faces stage does, score, aggregate.

The same code serves the pyfunc's media input, `dfd predict` and `dfd serve`, so one file gets one score whichever
way it is asked. Face extraction reuses `dfd.data` (sampling, detector, margin, crop size, rotation), with the
faces params recorded by the pipeline that trained the model (`faces_report.json`, logged beside the model).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfd.data.face_extract import face_crops
from dfd.data.media import decode_image_bytes, media_kind, read_rgb, sample_video_frames, video_info
from dfd.evaluation.aggregate import aggregate
from dfd.platform.config import AggregationParams, ServeParams

# Why a file has no score. `unsupported`: neither an image nor a video; `unreadable`: does not decode;
# `truncated`: the video ends before its header says; `too_long`: over the serve limits; `no_face`: nothing detected.
REASONS = ("unsupported", "unreadable", "truncated", "too_long", "no_face", "empty")
RESULT_COLUMNS = ["path", "p_fake", "label", "frames", "faces", "reason", "detail"]


@dataclass
class MediaResult:
    """One file's verdict; `p_fake`/`label` are None exactly when `reason` says why it could not be scored."""

    path: str
    p_fake: float | None = None
    label: str | None = None  # "fake" or "real", at the model's threshold
    frames: int = 0  # frames sampled and decoded
    faces: int = 0  # frames with a face (the frames that were scored)
    reason: str | None = None
    detail: str | None = None  # a note: the decoder's complaint, the limit that was hit
    crops: list[dict[str, Any]] = field(default_factory=list, repr=False)  # each face crop with its frame and score

    def row(self) -> dict[str, Any]:
        """The result as a table row (no crops)."""
        return {k: getattr(self, k) for k in RESULT_COLUMNS}


def load_frames(path: Path, faces_cfg: dict[str, Any], limits: ServeParams,
                kind: str | None = None) -> tuple[list[tuple[int, np.ndarray]], MediaResult]:
    """The frames to score of one file, or a result carrying the reason they cannot be had."""
    res = MediaResult(str(path))
    kind = kind or media_kind(path)
    if kind is None:
        res.reason, res.detail = "unsupported", f"not an image or video file type: '{path.suffix}'"
        return [], res
    if not path.is_file() or path.stat().st_size == 0:
        res.reason, res.detail = ("empty", "zero-byte file") if path.is_file() else ("unreadable", "missing file")
        return [], res
    if kind == "image":
        rgb = read_rgb(path)
        if rgb is None:
            res.reason, res.detail = "unreadable", "the image does not decode"
            return [], res
        return [(0, rgb)], res
    info = video_info(path)
    if info is None:
        res.reason, res.detail = "unreadable", "the video does not open (corrupt, truncated or not a video)"
        return [], res
    total, fps = info
    seconds = total / fps if fps > 0 else 0.0
    if total > limits.max_video_frames or seconds > limits.max_video_seconds:
        res.reason = "too_long"
        res.detail = (f"{total} frames, {seconds:.0f} s; limits {limits.max_video_frames} frames, "
                      f"{limits.max_video_seconds:.0f} s")
        return [], res
    frames, note = sample_video_frames(path, faces_cfg["frames_per_video"])
    if note and "truncated" in note:
        # Frames sampled from what is left would not be the frames the model was evaluated on: no score.
        res.reason, res.detail = "truncated", note
        return [], res
    if not frames:
        res.reason, res.detail = "unreadable", note or "no decodable frame"
        return [], res
    res.detail = note
    return frames, res


class MediaScorer:
    """Score images and videos with an ensemble, as evaluation scores a sample.

    Args:
        predictor: Crops (N, H, W, 3) uint8 to calibrated P(fake) (an `EnsemblePredictor`).
        spec: The ensemble spec (`ensemble.json`): aggregation and threshold.
        faces_cfg: The faces params the pipeline extracted the training crops with.
        limits: Video length limits (`serve:` params).
    """

    def __init__(self, predictor: Callable[[np.ndarray], np.ndarray], spec: dict[str, Any],
                 faces_cfg: dict[str, Any], limits: ServeParams | None = None) -> None:
        self.predictor = predictor
        self.faces_cfg = faces_cfg
        self.limits = limits or ServeParams()
        self.aggregation = AggregationParams(**spec.get("aggregation", {}))
        self.threshold = float(spec.get("threshold", spec["val_eer_threshold"]))

    def aggregation_for(self, method: str | None) -> AggregationParams:
        """The model's aggregation, or the same constants with another method."""
        return self.aggregation if not method else self.aggregation.model_copy(update={"method": method})

    def extract(self, frames: list[tuple[int, np.ndarray]], res: MediaResult) -> list[dict[str, Any]]:
        """Detect and crop the faces of the given frames, as the faces stage does; `res.reason` says when none."""
        res.frames = len(frames)
        found = face_crops(frames, self.faces_cfg)
        if not found:
            res.reason = "no_face"
        return found

    def score_found(self, found: list[dict[str, Any]], res: MediaResult, method: str | None = None) -> MediaResult:
        """Score the extracted face crops and aggregate them into `res` (unchanged when it has a reason)."""
        if res.reason:
            return res
        scores = np.asarray(self.predictor(np.stack([f["crop"] for f in found]).astype(np.uint8)), dtype=float)
        for f, s in zip(found, scores, strict=True):
            f["p_fake"] = float(s)
        # Every crop is one row, as in `video_scores` (evaluation): the same rule over the same rows.
        res.p_fake = aggregate(scores, self.aggregation_for(method))
        res.label = "fake" if res.p_fake >= self.threshold else "real"
        res.faces = len({f["frame"] for f in found})
        res.crops = found
        return res

    def score_frames(self, frames: list[tuple[int, np.ndarray]], res: MediaResult,
                     method: str | None = None) -> MediaResult:
        """Detect, crop, score and aggregate the given frames into `res`."""
        return self.score_found(self.extract(frames, res), res, method)

    def prepare_path(self, path: Path) -> tuple[list[dict[str, Any]], MediaResult]:
        """Read one file and extract its faces: everything before the models (what `dfd predict` runs ahead)."""
        frames, res = load_frames(Path(path), self.faces_cfg, self.limits)
        return ([], res) if res.reason else (self.extract(frames, res), res)

    def score_path(self, path: Path, method: str | None = None) -> MediaResult:
        """One file on disk."""
        return self.score_found(*self.prepare_path(path), method)

    def score_bytes(self, data: bytes, name: str = "upload", method: str | None = None) -> MediaResult:
        """One file's content (an upload): an image when it decodes as one, else tried as a video."""
        if not data:
            return MediaResult(name, reason="empty", detail="zero bytes")
        rgb = decode_image_bytes(data)
        if rgb is not None:
            return self.score_frames([(0, rgb)], MediaResult(name), method)
        # OpenCV decodes video only from a file: spill the bytes to a private temporary one.
        suffix = Path(name).suffix.lower() if media_kind(Path(name)) == "video" else ".mp4"
        with tempfile.TemporaryDirectory(prefix="dfd-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            frames, res = load_frames(path, self.faces_cfg, self.limits, kind="video")
            res.path = name
            if res.reason == "unreadable" and media_kind(Path(name)) is None:
                res.reason, res.detail = "unsupported", "neither a decodable image nor a video"
            return res if res.reason else self.score_frames(frames, res, method)
