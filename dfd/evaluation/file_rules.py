"""A file's P(fake) from its faces' scores by a named rule: the rule serving calls files by (`serve.file_rule`) and
the evaluate stage judges, so that the rule served is a rule the gate judged.

- `largest_face`: every face row of the file aggregated (the faces stage kept the largest face per frame; with
  `faces.all_faces`, every face, pooled), as `dfd.evaluation.aggregate.video_scores` always did.
- `worst_track`: each face track aggregated on its own, tracks with fewer than `need` frames left out (a video needs
  `min(serve.min_frames, faces.frames_per_video)`, an image 1), and the file called by its most fake-looking track;
  a file without such a track has no P(fake) (served as `not_applicable`, reason `too_few_frames`).

Serving (`dfd.serving.tracks.judge`) and evaluation (`rule_scores`) call the same `worst_track`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dfd.evaluation.aggregate import aggregate, video_scores
from dfd.evaluation.metrics import binary_metrics
from dfd.platform.config import AggregationParams

FILE_RULES = ("largest_face", "worst_track")
TOO_FEW_FRAMES = "too_few_frames"  # a served abstain reason (status not_applicable)


def min_frames_for(min_frames: int, frames_per_video: int, is_video: bool) -> int:
    """Frames with a face a file (or, under `worst_track`, a track) needs: 1 for an image; for a video
    `serve.min_frames`, but never more than the model samples (`faces.frames_per_video`): a model evaluated on
    2 frames a clip is not refused 2-frame answers."""
    return min(min_frames, frames_per_video) if is_video else 1


def worst_track(tracks: dict[int, np.ndarray], agg: AggregationParams, need: int
                ) -> tuple[dict[int, float | None], int | None]:
    """Each track's aggregated P(fake) (None when it has fewer than `need` frames), and the counted track with the
    highest one (None when no track is long enough). Ties go to the lowest track id."""
    scores = {t: aggregate(s, agg) if len(s) >= need else None for t, s in sorted(tracks.items())}
    counted = {t: p for t, p in scores.items() if p is not None}
    return scores, (max(counted, key=lambda t: counted[t]) if counted else None)


def rule_scores(frames: pd.DataFrame, rule: str, agg: AggregationParams, min_frames: int, frames_per_video: int,
                score_col: str = "prob") -> tuple[pd.DataFrame, list[str]]:
    """One row per file (`sample_id`, `label`, `score_col`) under `rule`, and the files it gives no score.

    Args:
        frames: One row per face crop: `sample_id`, `label`, `score_col`; `track` for `worst_track`; `media`
            (video|image) where known, else every file is a video.
        rule: `largest_face` or `worst_track`.
        agg: The trained aggregation (`ensemble.aggregation`).
        min_frames: `serve.min_frames`.
        frames_per_video: `faces.frames_per_video` the crops were sampled with.
        score_col: The P(fake) column.
    """
    if rule == "largest_face":
        return video_scores(frames, agg, score_col), []  # what evaluation always judged: unchanged
    if rule != "worst_track":
        raise ValueError(f"unknown file rule '{rule}': one of {', '.join(FILE_RULES)}")
    if "track" not in frames:
        raise ValueError("worst_track needs each crop's track id (the faces index's `track`)")
    rows, abstained = [], []
    media = frames["media"] if "media" in frames else pd.Series("video", index=frames.index)
    for sid, group in frames.assign(_media=media).groupby("sample_id", sort=True):
        need = min_frames_for(min_frames, frames_per_video, group["_media"].iloc[0] != "image")
        tracks = {int(t): g[score_col].to_numpy(dtype=float) for t, g in group.groupby("track", sort=True)}
        scores, worst = worst_track(tracks, agg, need)
        if worst is None:
            abstained.append(str(sid))
            continue
        rows.append({"sample_id": sid, "label": int(group["label"].iloc[0]), score_col: scores[worst]})
    return pd.DataFrame(rows, columns=["sample_id", "label", score_col]), abstained


def rule_metrics(frames: pd.DataFrame, rule: str, threshold: float, agg: AggregationParams, min_frames: int,
                 frames_per_video: int) -> dict[str, Any]:
    """Video-level metrics (`video_auc`, `video_eer`, `video_accuracy`, `video_ece`, ...) of the files `rule`
    scores, with `files` scored and `not_applicable` (files it gives no score, left out of the metrics)."""
    vids, abstained = rule_scores(frames, rule, agg, min_frames, frames_per_video)
    metrics = binary_metrics(vids["label"].to_numpy(), vids["prob"].to_numpy(), threshold)
    return {**{f"video_{k}": v for k, v in metrics.items()}, "files": len(vids), "not_applicable": len(abstained),
            "not_applicable_files": abstained[:20]}  # a few named, for the reviewer to look at


def worst_track_unjudged(faces_params: dict[str, Any] | None, track_max_gap: int) -> str | None:
    """Why the crops cannot judge `worst_track` (None: they can): it needs every face tracked, by the gap serving
    tracks with.

    Args:
        faces_params: The `params` of the faces report the crops were extracted with (None: no report).
        track_max_gap: `serve.track_max_gap`.
    """
    if faces_params is None:
        return "the faces report (faces_report.json) is missing: how the faces were extracted is unknown"
    if not faces_params.get("all_faces"):
        return ("the faces were extracted with faces.all_faces: false (the largest face of each frame only): "
                "there are no other faces to track; set faces.all_faces: true and rerun the faces stage")
    gap = faces_params.get("track_max_gap")
    if gap != track_max_gap:
        return (f"the faces stage tracked with a gap of {gap} sampled frames, serve.track_max_gap is {track_max_gap}: "
                f"rerun the faces stage")
    return None


def judge_rules(frames: pd.DataFrame, served: str, threshold: float, agg: AggregationParams, min_frames: int,
                track_max_gap: int, faces_params: dict[str, Any] | None) -> dict[str, Any]:
    """The test files under both rules, and whether the served rule could be judged (metrics.json `file_rules`).

    Args:
        frames: The judged set's scored crops (`sample_id`, `label`, `prob`, `track`, `media`).
        served: `serve.file_rule`.
        threshold: The decision threshold on P(fake).
        agg: The trained aggregation.
        min_frames: `serve.min_frames`.
        track_max_gap: `serve.track_max_gap`.
        faces_params: The `params` of the faces report of the crops (None: no report).

    Returns:
        `{"served", "judged", "reason", "rules": {rule: metrics (`rule_metrics`) or {"reason": why not scored}}}`.
    """
    if served not in FILE_RULES:
        raise ValueError(f"unknown serve.file_rule '{served}': one of {', '.join(FILE_RULES)}")
    fpv = int((faces_params or {}).get("frames_per_video", min_frames))
    rules: dict[str, Any] = {"largest_face": rule_metrics(frames, "largest_face", threshold, agg, min_frames, fpv)}
    why = worst_track_unjudged(faces_params, track_max_gap)
    if why is None:
        scored = rule_metrics(frames, "worst_track", threshold, agg, min_frames, fpv)
        if not scored["files"]:
            why = f"no test file has a face track of {min_frames_for(min_frames, fpv, True)} frames (serve.min_frames)"
        else:
            rules["worst_track"] = scored
    if why is not None:
        rules["worst_track"] = {"reason": why}
    reason = why if served == "worst_track" else None
    return {"served": served, "judged": reason is None, "reason": reason, "rules": rules}
