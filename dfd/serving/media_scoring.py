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
from dfd.data.media import IMAGE_EXTS, VIDEO_EXTS, media_kind, read_rgb, sample_video_frames
from dfd.evaluation.agreement import REASON as AGREEMENT_REASON
from dfd.evaluation.agreement import agreement_threshold, file_agreement, is_uncertain, member_weights
from dfd.platform.config import AggregationParams, ServeParams
from dfd.serving import tracks as face_tracks
from dfd.serving.media_checks import Refusal, check_frames, check_image, check_video, image_header, video_allow
from dfd.serving.tracks import ABSTAIN_REASONS, FACE_TOO_SMALL, assign_tracks, drop_small, judge

# Why a file's status is not `scored`. `unsupported`: neither an image nor a video; `unreadable`: does not decode;
# `truncated`: the video ends before its header says; `too_long`: over the serve length limits; `too_large`: over
# the pixel limits; `empty`: zero bytes; `no_face`: nothing detected; `face_too_small`, `too_few_frames`: see
# `dfd.serving.tracks`; `members_disagree`: scored, but the members that agree with the ensemble's label hold less than
# `ensemble.agreement_threshold` of the fusion's weight.
REASONS = ("unsupported", "unreadable", "truncated", "too_long", "too_large", "no_face", "empty", *ABSTAIN_REASONS,
           AGREEMENT_REASON)
# A file's status, one field for every kind of answer: `scored` (a P(fake), nothing to add); `uncertain` (a P(fake),
# but the reason says why to look again); `not_applicable` (no P(fake): the file is fine but the model cannot judge
# it: no face, faces too small, too few frames); `error` (no P(fake): the file is at fault, or over a limit). The
# reason says which rule applied; the status is derived from it, so the two never disagree.
STATUSES = ("scored", "uncertain", "not_applicable", "error")
UNCERTAIN_REASONS = frozenset({AGREEMENT_REASON})
NOT_APPLICABLE_REASONS = frozenset({"no_face", *ABSTAIN_REASONS})
CROP_CHUNK = 16  # crops scored between two cancel checks (the members batch them by 4 on CPU)
RESULT_COLUMNS = ["path", "p_fake", "label", "status", "agreement", "frames", "faces", "tracks", "reason", "detail"]


def status_of(reason: str | None, scored: bool) -> str:
    """The status of a result with this reason (`scored`: it has a P(fake))."""
    if scored:
        return "uncertain" if reason in UNCERTAIN_REASONS else "scored"
    return "not_applicable" if reason in NOT_APPLICABLE_REASONS else "error"


@dataclass
class MediaResult:
    """One file's verdict; `p_fake`/`label` are None exactly when the status is `not_applicable` or `error`."""

    path: str
    p_fake: float | None = None
    label: str | None = None  # "fake" or "real", at the model's threshold
    frames: int = 0  # frames sampled and decoded
    faces: int = 0  # frames with a face (the frames that were scored)
    reason: str | None = None  # why the status is not `scored` (REASONS)
    detail: str | None = None  # a note: the decoder's complaint, the limit that was hit, the members' votes
    # Share of the counted members whose own label agrees with `label` (dfd/evaluation/agreement.py); None when not
    # scored or when the model cannot say (a predictor without member scores).
    agreement: float | None = None
    crops: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the face crops the verdict aggregated
    # Every face track (`dfd.serving.tracks.track_table`), the per-frame timeline, and what produced them.
    track_list: list[dict[str, Any]] = field(default_factory=list, repr=False)
    timeline: list[dict[str, Any]] = field(default_factory=list, repr=False)
    kind: str | None = None  # image or video
    fps: float | None = None
    file_rule: str | None = None

    @property
    def tracks(self) -> int:
        """Number of face tracks found."""
        return len(self.track_list)

    @property
    def status(self) -> str:
        """`scored`, `uncertain`, `not_applicable` or `error` (STATUSES), from the reason: the two never disagree."""
        return status_of(self.reason, self.p_fake is not None)

    def row(self) -> dict[str, Any]:
        """The result as a table row (no crops; `tracks` is their number)."""
        return {k: getattr(self, k) for k in RESULT_COLUMNS}

    def json_row(self) -> dict[str, Any]:
        """The row with one entry per track (frames, boxes, P(fake), members' scores) and the timeline."""
        return {**self.row(), "file_rule": self.file_rule, "fps": self.fps, "tracks": self.track_list,
                "timeline": self.timeline}


def load_frames(path: Path, faces_cfg: dict[str, Any], limits: ServeParams, kind: str | None = None,
                check_cancel: Callable[[], None] | None = None,
                ) -> tuple[list[tuple[int, np.ndarray]], MediaResult]:
    """The frames to score of one file, or a result carrying the reason they cannot be had.

    The `serve:` limits (formats, containers, codecs, pixels, length) are checked on the headers before any pixel
    is decoded (`dfd.serving.media_checks`). `check_cancel` may raise between frames to stop.
    """
    res = MediaResult(str(path))
    kind = kind or media_kind(path)
    if kind is None:
        res.reason, res.detail = "unsupported", f"not an image or video file type: '{path.suffix}'"
        return [], res
    if not path.is_file() or path.stat().st_size == 0:
        res.reason, res.detail = ("empty", "zero-byte file") if path.is_file() else ("unreadable", "missing file")
        return [], res
    try:
        if kind == "image":
            check_image(path, limits)
        else:
            header = check_video(path, limits)
            # the header is one frame's size: every frame is decoded once, in a bounded FFmpeg process
            check_frames(path, limits.max_video_pixels, limits.request_timeout_s, limits.worker_memory_bytes,
                         check_cancel, header.container, video_allow(limits))
    except Refusal as refused:
        res.reason, res.detail = refused.reason, refused.detail
        return [], res
    if kind == "image":
        rgb = read_rgb(path)
        if rgb is None:
            res.reason, res.detail = "unreadable", "the image does not decode"
            return [], res
        res.kind = "image"
        return [(0, rgb)], res
    frames, note = sample_video_frames(path, faces_cfg["frames_per_video"], check_cancel, video_allow(limits))
    if note and "truncated" in note:
        # Frames sampled from what is left would not be the frames the model was evaluated on: no score.
        res.reason, res.detail = "truncated", note
        return [], res
    if not frames:
        res.reason, res.detail = "unreadable", note or "no decodable frame"
        return [], res
    res.detail = note
    res.kind, res.fps = "video", face_tracks.video_fps(path, video_allow(limits))
    return frames, res


def sniff_kind(path: Path) -> str:
    """'image' when the file's first bytes name an image format (whatever its name says), else 'video'; no parser
    reads it here."""
    try:
        return "image" if image_header(path, allowed=()) is not None else "video"
    except Refusal:  # an image too large even to describe: load_frames says so
        return "image"


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
        # Member agreement needs each member's score: an `EnsemblePredictor` gives them (`score_with_members`); a
        # plain crops -> P(fake) callable gives none, and its results carry no agreement.
        self.agreement_weights = member_weights(spec) if "weights" in spec else {}
        self.agreement_members = list(self.agreement_weights)
        self.agreement_threshold = agreement_threshold(spec)

    def aggregation_for(self, method: str | None) -> AggregationParams:
        """The model's aggregation, or the same constants with another method."""
        return self.aggregation if not method else self.aggregation.model_copy(update={"method": method})

    def extract(self, frames: list[tuple[int, np.ndarray]], res: MediaResult,
                check_cancel: Callable[[], None] | None = None, limits: ServeParams | None = None,
                ) -> list[dict[str, Any]]:
        """Detect and crop every face of the given frames, as the faces stage does; `res.reason` says when none."""
        lim = limits or self.limits
        res.frames = len(frames)
        res.timeline = [{"frame": i} for i, _ in frames]  # the sampled frames; `score_found` fills in the scores
        # Every face of every frame (the verdict's rule picks among them after scoring); the small ones never get one.
        found, small = drop_small(face_crops(frames, {**self.faces_cfg, "all_faces": True}, check_cancel),
                                  lim.min_face_px)
        if not found:
            res.reason = FACE_TOO_SMALL if small else "no_face"
            if small:
                res.detail = f"{small} faces found, all under serve.min_face_px={lim.min_face_px} px"
        return found

    def score_found(self, found: list[dict[str, Any]], res: MediaResult, method: str | None = None,
                    check_cancel: Callable[[], None] | None = None, limits: ServeParams | None = None,
                    ) -> MediaResult:
        """Score the extracted face crops, track them and judge the file into `res` (unchanged when it has a
        reason); `limits` (a server's `serve:` params) win over the scorer's own."""
        lim = limits or self.limits
        if res.reason:
            return res
        crops = np.stack([f["crop"] for f in found]).astype(np.uint8)
        with_members = getattr(self.predictor, "score_with_members", None)
        parts, member_parts = [], []
        for i in range(0, len(crops), CROP_CHUNK):  # a cancel check between chunks: a video may have many faces
            if check_cancel is not None:
                check_cancel()
            chunk = crops[i:i + CROP_CHUNK]
            if with_members:  # one forward pass per member gives both (an `EnsemblePredictor`)
                chunk_scores, chunk_members = with_members(chunk)
                member_parts.append(chunk_members)
            else:
                chunk_scores = self.predictor(chunk)
            parts.append(np.asarray(chunk_scores, dtype=float))
        scores = np.concatenate(parts)
        members = ({m: np.concatenate([part[m] for part in member_parts]) for m in member_parts[0]}
                   if member_parts else None)
        for i, (f, s) in enumerate(zip(found, scores, strict=True)):
            f["p_fake"] = float(s)
            if members is not None:
                f["members"] = {m: float(v[i]) for m, v in members.items()}
        sampled = [t["frame"] for t in res.timeline]
        assign_tracks(found, sampled, lim.track_max_gap)
        # Every crop the rule keeps is one row, as in `video_scores` (evaluation): the same rule over the same rows.
        res.file_rule = lim.file_rule
        rule = self.aggregation_for(method)
        verdict = judge(found, sampled, res.kind == "video", res.file_rule, rule, lim, self.faces_cfg, res.fps)
        res.track_list = verdict.tracks
        res.timeline = face_tracks.timeline(verdict.tracks, sampled, res.fps)
        res.faces = len({f["frame"] for f in found})
        if verdict.p_fake is None:
            res.reason, res.detail = verdict.reason, verdict.detail
            return res
        res.p_fake = verdict.p_fake
        res.label = "fake" if res.p_fake >= self.threshold else "real"
        res.crops = verdict.used
        if members is not None and self.agreement_members:
            # Agreement over the crops the verdict used, by the same rule: the members judge what the ensemble judged.
            self._judge_agreement(res, {m: np.array([f["members"][m] for f in verdict.used])
                                        for m in self.agreement_members}, rule)
        return res

    def _judge_agreement(self, res: MediaResult, members: dict[str, np.ndarray], rule: AggregationParams) -> None:
        """Set `res.agreement`, and `uncertain` (reason, and who disagreed in the detail) when it is below the
        threshold."""
        res.agreement = file_agreement(members, res.label == "fake", rule, self.agreement_weights)
        if is_uncertain(res.agreement, self.agreement_threshold):
            fake = res.label == "fake"
            dissent = [m for m, s in members.items()
                       if file_agreement({m: s}, fake, rule, {m: self.agreement_weights[m]}) == 0.0]
            note = (f"members holding {res.agreement:.2f} of the fusion's weight agree with the ensemble's label "
                    f"'{res.label}' (< ensemble.agreement_threshold {self.agreement_threshold}); "
                    f"disagreeing: {', '.join(dissent)}")
            res.reason = AGREEMENT_REASON
            res.detail = f"{res.detail}; {note}" if res.detail else note

    def score_frames(self, frames: list[tuple[int, np.ndarray]], res: MediaResult, method: str | None = None,
                     check_cancel: Callable[[], None] | None = None, limits: ServeParams | None = None,
                     ) -> MediaResult:
        """Detect, crop, score and judge the given frames into `res`."""
        return self.score_found(self.extract(frames, res, check_cancel, limits), res, method, check_cancel, limits)

    def prepare_path(self, path: Path, check_cancel: Callable[[], None] | None = None,
                     limits: ServeParams | None = None) -> tuple[list[dict[str, Any]], MediaResult]:
        """Read one file and extract its faces: everything before the models (what `dfd predict` runs ahead).

        `limits` (a server's `serve:` params) win over the scorer's own for this call.
        """
        frames, res = load_frames(Path(path), self.faces_cfg, limits or self.limits, check_cancel=check_cancel)
        return ([], res) if res.reason else (self.extract(frames, res, check_cancel, limits), res)

    def score_path(self, path: Path, method: str | None = None, check_cancel: Callable[[], None] | None = None,
                   limits: ServeParams | None = None) -> MediaResult:
        """One file on disk, its kind from its name."""
        return self.score_found(*self.prepare_path(path, check_cancel, limits), method, check_cancel, limits)

    def score_upload(self, path: Path, name: str, method: str | None = None,
                     check_cancel: Callable[[], None] | None = None, limits: ServeParams | None = None,
                     ) -> MediaResult:
        """One uploaded file, its kind from its content (an image when Pillow knows its header, else a video).

        Args:
            path: Where the upload's bytes are (a private file of the caller's).
            name: The client's file name, reported as the result's `path`.
            method: An aggregation rule instead of the model's.
            check_cancel: Called between frames; raises to stop.
            limits: A server's `serve:` params, over the scorer's own.
        """
        if path.stat().st_size == 0:
            return MediaResult(name, reason="empty", detail="zero bytes")
        kind = sniff_kind(path)
        frames, res = load_frames(path, self.faces_cfg, limits or self.limits, kind=kind, check_cancel=check_cancel)
        res.path = name
        if res.reason == "unreadable" and kind == "video" and media_kind(Path(name)) != "video":
            res.reason, res.detail = "unsupported", "neither a decodable image nor a video"
        return res if res.reason else self.score_frames(frames, res, method, check_cancel, limits)

    def score_bytes(self, data: bytes, name: str = "upload", method: str | None = None) -> MediaResult:
        """One file's content (the pyfunc's `content` column): spilled to a private file, then `score_upload`."""
        if not data:
            return MediaResult(name, reason="empty", detail="zero bytes")
        with tempfile.TemporaryDirectory(prefix="dfd-upload-") as tmp:
            path = Path(tmp) / upload_name(name)
            path.write_bytes(data)
            return self.score_upload(path, name, method)


def upload_name(client_name: str) -> str:
    """A safe local file name for an upload: `upload` plus the client's suffix when it is a media one.

    FFmpeg's probe weighs the extension; anything else from the client (folders, odd characters) is dropped.
    """
    suffix = Path(client_name.replace("\\", "/")).suffix.lower()
    return "upload" + (suffix if suffix in IMAGE_EXTS | VIDEO_EXTS else "")
