"""Face tracks across sampled frames: the one tracker the faces stage (`faces.all_faces`) and served scoring use.

The faces stage writes each crop's track id to the faces index; served scoring tracks the faces it finds with the
same class and the same `serve.track_max_gap`, so a file's tracks in evaluation are the tracks serving forms (the
evaluate stage judges `serve.file_rule: worst_track` on them: `dfd.evaluation.file_rules`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dfd.data.face_detect import iou
from dfd.data.face_types import Box

# A box continues a track it does not overlap when its centre is within this share of the face's side per sampled
# frame step from the track's last box, and its side within this ratio: sampled frames seconds apart move a face
# further than IoU tolerates, but rarely by more than half its width per step, nor change its size by 1.5x.
CENTRE_SHARE, SIDE_RATIO = 0.5, 1.5
# Sampled frames a track may miss and still continue (`serve.track_max_gap`'s default: one missed detection on
# frames seconds apart must not split a person into two tracks, and three in a row mostly mean the person left).
TRACK_MAX_GAP = 2


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

    def __init__(self, max_gap: int = TRACK_MAX_GAP, iou_min: float = 0.3) -> None:
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
