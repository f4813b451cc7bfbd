"""Every face of a file, tracked, scored per track, and the file's verdict by a named rule; or an honest abstain.

Served scoring detects every face of each sampled frame (`face_crops` with `all_faces`), drops faces smaller than
`serve.min_face_px`, links the rest into tracks (`FaceTracker`), scores every crop once, aggregates each track with
the model's trained aggregation, and calls the file by `serve.file_rule`:

- `largest_face`: the largest face of each frame (every face pooled for a model trained with `faces.all_faces`),
  aggregated over frames: the rule the gate evaluated, and the default.
- `worst_track`: the most fake-looking track among those with at least `min_frames` frames: one swapped face beside
  real ones is not averaged away.

A file the model cannot judge gets no P(fake): reason `face_too_small` (faces were found, all under `min_face_px`)
or `too_few_frames` (a video with fewer frames with a scorable face than `min_frames`; under `worst_track`, no
track that long), both status `not_applicable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfd.data.face_detect import Box, iou
from dfd.data.video_open import ANY_VIDEO, VideoAllow, open_video
from dfd.evaluation.aggregate import aggregate
from dfd.platform.config import AggregationParams, ServeParams

# Reasons this module gives (status `not_applicable`: the file is fine, the model cannot judge it).
FACE_TOO_SMALL, TOO_FEW_FRAMES = "face_too_small", "too_few_frames"
ABSTAIN_REASONS = (FACE_TOO_SMALL, TOO_FEW_FRAMES)
FILE_RULES = ("largest_face", "worst_track")
# A box continues a track it does not overlap when its centre is within this share of the face's side per sampled
# frame step from the track's last box, and its side within this ratio: sampled frames seconds apart move a face
# further than IoU tolerates, but rarely by more than half its width per step, nor change its size by 1.5x.
CENTRE_SHARE, SIDE_RATIO = 0.5, 1.5


def face_side(box: list[float]) -> float:
    """The longer side of a box [x0, y0, x1, y1] in pixels (what the square crop is cut from)."""
    return max(box[2] - box[0], box[3] - box[1])


class FaceTracker:
    """Greedy matching of each sampled frame's boxes to live tracks, bridging missed detections.

    A pair is a candidate when its IoU is at least `iou_min`, or when the centres are within `CENTRE_SHARE` of the
    face's side per sampled-frame step (a face missed on one sampled frame has moved two steps' worth when seen
    again) and the sides within `SIDE_RATIO`. Candidates are taken best first (IoU, then nearness). A track not
    matched for more than `max_gap` sampled frames ends; a later face there starts a new track. Tracks are spatial
    continuity, not identity: two people who swap places between sampled frames can swap tracks.

    Args:
        max_gap: Sampled frames a track may miss and still continue.
        iou_min: IoU that continues a track whatever the centres.
    """

    def __init__(self, max_gap: int = 2, iou_min: float = 0.3) -> None:
        self.max_gap, self.iou_min = max_gap, iou_min
        self.live: dict[int, tuple[int, Box]] = {}  # track id -> (step last seen, last box)
        self.next_id = 0

    @staticmethod
    def _nearness(a: Box, b: Box, steps: int) -> float:
        """1 at the same centre, 0 at the bridging limit, negative past it or when the sizes differ too much."""
        sa, sb = max(a.x1 - a.x0, a.y1 - a.y0), max(b.x1 - b.x0, b.y1 - b.y0)
        if min(sa, sb) <= 0 or max(sa, sb) / min(sa, sb) > SIDE_RATIO:
            return -1.0
        d = np.hypot((a.x0 + a.x1 - b.x0 - b.x1) / 2, (a.y0 + a.y1 - b.y0 - b.y1) / 2)
        return 1.0 - d / (CENTRE_SHARE * max(sa, sb) * steps)

    def update(self, step: int, boxes: list[Box]) -> list[int]:
        """Track ids for `boxes`, the detections of sampled frame number `step` (0, 1, ... in sampling order)."""
        self.live = {t: v for t, v in self.live.items() if step - v[0] <= self.max_gap + 1}
        pairs = []
        for i, b in enumerate(boxes):
            for t, (seen, prev) in self.live.items():
                overlap, near = iou(b, prev), self._nearness(b, prev, step - seen)
                if overlap >= self.iou_min or near > 0:
                    pairs.append((overlap, near, i, t))
        ids: dict[int, int] = {}
        for _, _, i, t in sorted(pairs, reverse=True):
            if i not in ids and t not in ids.values():
                ids[i] = t
        for i in range(len(boxes)):
            if i not in ids:
                ids[i], self.next_id = self.next_id, self.next_id + 1
        for i, b in enumerate(boxes):
            self.live[ids[i]] = (step, b)
        return [ids[i] for i in range(len(boxes))]


def assign_tracks(found: list[dict[str, Any]], sampled: list[int], max_gap: int) -> None:
    """Set each face's `track` (in place); `sampled` is every sampled frame index in order, faces or not."""
    step_of = {idx: s for s, idx in enumerate(sampled)}
    tracker = FaceTracker(max_gap)
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for f in found:
        by_frame.setdefault(f["frame"], []).append(f)
    for idx in sorted(by_frame, key=lambda i: step_of.get(i, i)):
        faces = by_frame[idx]
        for f, t in zip(faces, tracker.update(step_of.get(idx, idx), [Box(*f["box"]) for f in faces]), strict=True):
            f["track"] = t


@dataclass
class Verdict:
    """A file's score under a rule, or the reason it has none, with every track."""

    p_fake: float | None
    reason: str | None
    detail: str | None
    used: list[dict[str, Any]]  # the faces the verdict aggregated (what monitoring's image statistics describe)
    tracks: list[dict[str, Any]] = field(default_factory=list)


def min_frames_for(limits: ServeParams, frames_per_video: int, is_video: bool) -> int:
    """Frames with a face a file needs: 1 for an image; for a video `serve.min_frames`, but never more than the
    model samples (`faces.frames_per_video`): a model evaluated on 2 frames a clip is not refused 2-frame answers."""
    return min(limits.min_frames, frames_per_video) if is_video else 1


def track_table(faces: list[dict[str, Any]], agg: AggregationParams, need: int,
                fps: float | None) -> list[dict[str, Any]]:
    """One entry per track: its frames (time, box, P(fake), members' scores), its aggregated P(fake) when it has
    at least `need` frames (else None and its reason)."""
    out = []
    for t in sorted({f["track"] for f in faces}):
        mine = [f for f in faces if f["track"] == t]
        scores = np.array([f["p_fake"] for f in mine])
        long_enough = len(mine) >= need
        members = sorted(mine[0].get("members") or {})
        out.append({
            "track": t, "n_frames": len(mine),
            "p_fake": aggregate(scores, agg) if long_enough else None,
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
    if rule == "worst_track":
        judged = [t for t in tracks if t["p_fake"] is not None]
        if not judged:
            return Verdict(None, TOO_FEW_FRAMES, f"no face track has {need} frames (serve.min_frames)", [], tracks)
        worst = max(judged, key=lambda t: t["p_fake"])
        return Verdict(worst["p_fake"], None, None, [f for f in found if f["track"] == worst["track"]], tracks)
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
