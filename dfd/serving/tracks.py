"""Every face of a file, tracked, scored per track, and the file's verdict by a named rule; or an honest abstain.

Served scoring detects every face of each sampled frame (`face_crops` with `all_faces`), drops faces smaller than
`serve.min_face_px`, links the rest into tracks (`FaceTracker`), scores every crop once, aggregates each track with
the model's trained aggregation, and calls the file by `serve.file_rule`:

- `largest_face`: the largest face of each frame (every face pooled for a model trained with `faces.all_faces`),
  aggregated over frames: the default.
- `worst_track`: the most fake-looking track among those with at least `min_frames` frames: one swapped face beside
  real ones is not averaged away.

The evaluate stage scores the test files under both rules with the same functions (`dfd.evaluation.file_rules`;
`worst_track` needs a model whose faces were extracted with `faces.all_faces`) and the gate judges the served one.

A file the model cannot judge gets no P(fake): reason `face_too_small` (faces were found, all under `min_face_px`)
or `too_few_frames` (a video with fewer frames with a scorable face than `min_frames`; under `worst_track`, no
track that long), both status `not_applicable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfd.data.face_tracking import FaceTracker, assign_tracks, face_side  # noqa: F401  (re-exported)
from dfd.data.video_open import ANY_VIDEO, VideoAllow, open_video
from dfd.evaluation.aggregate import aggregate
from dfd.evaluation.file_rules import FILE_RULES, TOO_FEW_FRAMES, worst_track
from dfd.evaluation.file_rules import min_frames_for as _min_frames_for
from dfd.platform.config import AggregationParams, ServeParams

# Reasons this module gives (status `not_applicable`: the file is fine, the model cannot judge it).
FACE_TOO_SMALL = "face_too_small"
ABSTAIN_REASONS = (FACE_TOO_SMALL, TOO_FEW_FRAMES)


@dataclass
class Verdict:
    """A file's score under a rule, or the reason it has none, with every track."""

    p_fake: float | None
    reason: str | None
    detail: str | None
    used: list[dict[str, Any]]  # the faces the verdict aggregated (what monitoring's image statistics describe)
    tracks: list[dict[str, Any]] = field(default_factory=list)


def min_frames_for(limits: ServeParams, frames_per_video: int, is_video: bool) -> int:
    """Frames with a face a file needs (`dfd.evaluation.file_rules.min_frames_for` of `serve.min_frames`)."""
    return _min_frames_for(limits.min_frames, frames_per_video, is_video)


def track_table(faces: list[dict[str, Any]], agg: AggregationParams, need: int,
                fps: float | None) -> list[dict[str, Any]]:
    """One entry per track: its frames (time, box, P(fake), members' scores), its aggregated P(fake) when it has
    at least `need` frames (else None and its reason)."""
    out = []
    by_track = {t: [f for f in faces if f["track"] == t] for t in sorted({f["track"] for f in faces})}
    scores, _ = worst_track({t: np.array([f["p_fake"] for f in mine]) for t, mine in by_track.items()}, agg, need)
    for t, mine in by_track.items():
        long_enough = scores[t] is not None
        members = sorted(mine[0].get("members") or {})
        out.append({
            "track": t, "n_frames": len(mine),
            "p_fake": scores[t],
            "reason": None if long_enough else TOO_FEW_FRAMES,
            "members": {m: aggregate(np.array([f["members"][m] for f in mine]), agg) for m in members}
            if long_enough else {},
            "mean_side_px": float(np.mean([face_side(f["box"]) for f in mine])),
            "frames": [{"frame": f["frame"], "t": round(f["frame"] / fps, 3) if fps else None,
                        "box": [round(float(v), 1) for v in f["box"]], "p_fake": f["p_fake"],
                        **({"members": f["members"]} if f.get("members") else {})} for f in mine],
        })
    return out


def judge(found: list[dict[str, Any]], sampled: list[int], is_video: bool, rule: str, agg: AggregationParams,
          limits: ServeParams, faces_cfg: dict[str, Any], fps: float | None = None) -> Verdict:
    """The file's P(fake) under `rule` from its scored faces (`p_fake`, `track` and `box` set), or why none.

    Args:
        found: Every scorable face (at least `min_face_px`), scored and tracked.
        sampled: The sampled frame indices (with or without a face).
        is_video: Whether the file is a video (an image needs one frame).
        rule: `largest_face` or `worst_track`.
        agg: The model's aggregation (or the request's).
        limits: `serve:` params (`min_frames`).
        faces_cfg: The model's faces params (`frames_per_video`, `all_faces`).
        fps: Frames per second of the video, for timestamps.
    """
    need = min_frames_for(limits, int(faces_cfg.get("frames_per_video", 1)), is_video)
    tracks = track_table(found, agg, need, fps)
    if rule == "worst_track":  # the rule the evaluate stage judges with the same function (file_rules.worst_track)
        _, worst = worst_track({t["track"]: np.array([f["p_fake"] for f in t["frames"]]) for t in tracks}, agg, need)
        if worst is None:
            return Verdict(None, TOO_FEW_FRAMES, f"no face track has {need} frames (serve.min_frames)", [], tracks)
        chosen = next(t for t in tracks if t["track"] == worst)
        return Verdict(chosen["p_fake"], None, None, [f for f in found if f["track"] == worst], tracks)
    if rule != "largest_face":
        raise ValueError(f"unknown serve.file_rule '{rule}': one of {', '.join(FILE_RULES)}")
    if faces_cfg.get("all_faces"):
        used = found  # the model was trained and evaluated on every face of every frame, pooled
    else:
        largest: dict[int, dict[str, Any]] = {}
        for f in found:
            if f["frame"] not in largest or face_side(f["box"]) > face_side(largest[f["frame"]]["box"]):
                largest[f["frame"]] = f
        used = [largest[i] for i in sorted(largest)]
    frames = len({f["frame"] for f in used})
    if frames < need:
        return Verdict(None, TOO_FEW_FRAMES, f"{frames} of {len(sampled)} sampled frames have a scorable face; "
                       f"{need} needed (serve.min_frames)", [], tracks)
    return Verdict(aggregate(np.array([f["p_fake"] for f in used]), agg), None, None, used, tracks)


def drop_small(found: list[dict[str, Any]], min_face_px: int) -> tuple[list[dict[str, Any]], int]:
    """The faces at least `min_face_px` on their longer side, and how many were smaller."""
    kept = [f for f in found if face_side(f["box"]) >= min_face_px]
    return kept, len(found) - len(kept)


def timeline(tracks: list[dict[str, Any]], sampled: list[int], fps: float | None) -> list[dict[str, Any]]:
    """One entry per sampled frame: its time in seconds and each track's P(fake) there (absent: no face)."""
    at: dict[int, dict[str, float]] = {i: {} for i in sampled}
    for t in tracks:
        for f in t["frames"]:
            at.setdefault(f["frame"], {})[str(t["track"])] = f["p_fake"]
    return [{"frame": i, "t": round(i / fps, 3) if fps else None, "p_fake": at[i]} for i in sorted(at)]


def video_fps(path: Path | str, allow: VideoAllow = ANY_VIDEO) -> float | None:
    """Frames per second from the video's header (None when it does not say): sampled frame index to seconds.
    FFmpeg opens it under `allow` (`dfd.data.video_open`)."""
    import cv2

    cap = open_video(Path(path), allow)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if np.isfinite(fps) and 0 < fps < 1000 else None
