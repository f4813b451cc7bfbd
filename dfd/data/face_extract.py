"""Face extraction of one sample: sample frames, detect on a downscaled copy, crop with a margin, save PNGs.

Kept free of Prefect and torch so that the process pool's workers start fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfd.data.face_detect import Box, Detector, Landmarks, create_detector, detect_chain, square_crop
from dfd.data.face_tracking import TRACK_MAX_GAP, FaceTracker
from dfd.data.media import read_rgb, sample_video_frames
from dfd.platform.config import FacesParams
from dfd.platform.files import atomic_path, read_cache_json, write_json

log = logging.getLogger(__name__)

DONE_FILE = "faces.json"  # per-sample record; its fingerprint makes reruns skip finished samples

# One detector and landmark model per thread: dlib's detectors are not safe to share between threads (the server
# scores requests, and `dfd predict` extracts faces, in worker threads).
_WORKER = threading.local()


# Faces params that change no crop and no index row: changing them must not re-extract anything.
NOT_CROP_KEYS = frozenset({"workers", "min_face_share"})
# Params read by some detector families only: they count only when one of those is in the chain.
DETECTOR_KEYS = {"upsample": {"dlib_hog", "dlib_cnn"}, "mtcnn_confidence": {"mtcnn"}, "mtcnn_min_face_size": {"mtcnn"}}
_DEFAULTS = FacesParams().model_dump()  # fills keys missing from the faces params of models registered earlier


def with_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with today's defaults under the keys it lacks (a model's faces params from before they existed)."""
    return {**_DEFAULTS, **cfg}


def detector_chain(cfg: dict[str, Any]) -> list[str]:
    """`faces.detector`, then `faces.fallback`, each name once."""
    return list(dict.fromkeys([cfg["detector"], *cfg.get("fallback", [])]))


def crop_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """The faces params that decide a sample's crops and rows: none of the pool size, the stage's share gate, or
    the options of detector families the chain does not use."""
    chain = set(detector_chain(cfg))
    return {k: v for k, v in cfg.items()
            if k not in NOT_CROP_KEYS and (k not in DETECTOR_KEYS or DETECTOR_KEYS[k] & chain)}


def fingerprint(cfg: dict[str, Any], path: Path) -> str:
    """What decides a sample's crops: the crop-changing face params and the file's size and modification time."""
    st = path.stat()
    blob = json.dumps({"cfg": crop_params(cfg), "size": st.st_size, "mtime": int(st.st_mtime)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _models(cfg: dict[str, Any]) -> tuple[list[tuple[str, Detector]], Landmarks | None]:
    cfg = with_defaults(cfg)
    opts = {"confidence": cfg["mtcnn_confidence"], "min_face_size": cfg["mtcnn_min_face_size"]}
    key = json.dumps([detector_chain(cfg), cfg["upsample"], opts, cfg["landmarks"]])
    if getattr(_WORKER, "key", None) != key:
        _WORKER.chain = [(name, create_detector(name, cfg["upsample"], **opts)) for name in detector_chain(cfg)]
        _WORKER.lm = Landmarks() if cfg["landmarks"] else None
        _WORKER.key = key
    return _WORKER.chain, _WORKER.lm


def crop_decodes(path: Path) -> bool:
    """Whether the crop at `path` exists and decodes: a file that merely exists may be truncated or overwritten."""
    return path.is_file() and cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None


def crop_intact(path: Path, size: int | None, decode: bool = False) -> bool:
    """Whether a recorded crop is still as written: its size as recorded at write (a `stat`, the fast path that
    keeps a rerun over millions of crops cheap), decoded only when no size was recorded (older records) or when
    `decode` asks for it."""
    if size is not None and not decode:
        try:
            return path.stat().st_size == size
        except OSError:
            return False
    return crop_decodes(path)


def write_crop(path: Path, rgb: np.ndarray) -> int:
    """Save a crop as PNG (lossless: no new artefacts) atomically, so a killed worker never leaves half a file that
    a rerun trusts; returns its size in bytes, recorded for `crop_intact`."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode a crop as PNG for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return len(buf)


def cached(sample: dict[str, Any], root: str, out_dir: str, cfg: dict[str, Any],
           decode: bool = False) -> dict[str, Any] | None:
    """The recorded result of a sample already extracted with the same params, with every crop still intact.

    A corrupt `faces.json` is discarded with a warning, and a crop that is missing or no longer has the size it was
    written with (`decode`: no longer decodes) sends the whole sample back to extraction, so that rerunning the
    stage repairs the cache instead of trusting it.
    """
    dest = Path(out_dir) / sample["sample_id"]
    done = dest / DONE_FILE
    if not done.is_file():
        return None
    try:
        fp = fingerprint(cfg, Path(root) / sample["path"])
    except OSError:
        return None
    record = read_cache_json(done)
    if not isinstance(record, dict) or record.get("fingerprint") != fp or not isinstance(record.get("frames"), list):
        return None
    bad = [f["crop"] for f in record["frames"] if not crop_intact(dest.parent / f["crop"], f.get("bytes"), decode)]
    if bad:
        log.warning("sample %s: crop %s is missing, changed or does not decode; extracting the sample again",
                    sample["sample_id"], dest.parent / bad[0])
        return None
    return {"sample_id": sample["sample_id"], "frames": record["frames"], "report": record["report"], "skipped": True}


def extract_sample(sample: dict[str, Any], root: str, out_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Extract the largest face (or every face) of each sampled frame of one sample, and record it for `cached`.

    Args:
        sample: A manifest row (sample_id, path, media, ...).
        root: Dataset root.
        out_dir: Where `<sample_id>/<frame>.png` go.
        cfg: The `faces` params as a dict.

    Returns:
        `{"sample_id", "frames": [...], "report": {...}, "skipped": bool}`; a frame row holds its crop's path
        relative to `out_dir`'s parent, its box, and its landmarks in crop pixels.
    """
    src = Path(root) / sample["path"]
    sid = sample["sample_id"]
    dest = Path(out_dir) / sid
    done = dest / DONE_FILE
    try:
        fp = fingerprint(cfg, src)
    except OSError as exc:
        return {"sample_id": sid, "frames": [], "skipped": False,
                "report": {"sample_id": sid, "path": sample["path"], "sampled": 0, "faces": 0,
                           "note": f"cannot read file: {exc.strerror}"}}
    chain, landmarks = _models(cfg)
    if sample["media"] == "image":
        rgb = read_rgb(src)
        frames, note = ([(0, rgb)], None) if rgb is not None else ([], "unreadable image")
    else:
        frames, note = sample_video_frames(src, cfg["frames_per_video"])
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(".*.tmp"):  # our own temporaries, left by a worker killed mid-write
        stale.unlink(missing_ok=True)
    rows = []
    tracker = FaceTracker(cfg.get("track_max_gap", TRACK_MAX_GAP))  # serving's tracker (dfd.data.face_tracking)
    found_by = detect_chain(chain, [rgb for _, rgb in frames], cfg["detect_max_side"])  # batched over frames
    for step, ((idx, rgb), (boxes, det_name)) in enumerate(zip(frames, found_by, strict=True)):
        if not boxes:
            continue
        if cfg["all_faces"]:
            kept: list[tuple[int, Box]] = list(zip(tracker.update(step, boxes), boxes, strict=True))
        else:
            kept = [(0, max(boxes, key=lambda b: b.area))]  # the largest face: the subject, not a bystander
        for track, box in kept:
            crop, (x0, y0, side) = square_crop(rgb, box, cfg["margin"], cfg["crop_size"])
            name = f"{idx:05d}_{track}.png" if cfg["all_faces"] else f"{idx:05d}.png"
            size = write_crop(dest / name, crop)
            row: dict[str, Any] = {"frame": idx, "track": track, "crop": f"{dest.name}/{name}", "score": box.score,
                                   "box": [box.x0, box.y0, box.x1, box.y1], "bytes": size, "detector": det_name}
            if landmarks is not None:
                pts = (landmarks(rgb, box) - np.array([x0, y0], np.float32)) * (cfg["crop_size"] / side)
                row["landmarks"] = pts.round(2).flatten().tolist()
            rows.append(row)
    if frames and not rows:
        note = (note + "; " if note else "") + "no face found"
    elif not frames and not note:
        note = "no decodable frame"
    found = len({r["frame"] for r in rows})
    report = {"sample_id": sid, "path": sample["path"], "sampled": len(frames), "faces": found, "crops": len(rows),
              "note": note}
    # Atomic: a kill mid-write must leave no half-written record that a rerun would trust.
    write_json(done, {"fingerprint": fp, "frames": rows, "report": report}, indent=None)
    return {"sample_id": sid, "frames": rows, "report": report, "skipped": False}


def _detected(chain: list[tuple[str, Detector]], frames: list[tuple[int, np.ndarray]], max_side: int,
              check_cancel: Callable[[], None] | None) -> Iterator[tuple[int, np.ndarray, list[Box], str | None]]:
    """(frame index, frame, boxes, detector name) per frame: batched over all frames, or one frame at a time with a
    cancel check before each when `check_cancel` is given (a timed-out server request must stop between frames)."""
    if check_cancel is None:
        found = detect_chain(chain, [rgb for _, rgb in frames], max_side)
        for (idx, rgb), (boxes, name) in zip(frames, found, strict=True):
            yield idx, rgb, boxes, name
        return
    for idx, rgb in frames:
        check_cancel()  # raises when the request was cancelled
        [(boxes, name)] = detect_chain(chain, [rgb], max_side)
        yield idx, rgb, boxes, name


def face_crops(frames: list[tuple[int, np.ndarray]], cfg: dict[str, Any],
               check_cancel: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """The crops `extract_sample` would save for these frames, in memory (what the served model scores).

    Same detector chain (fallbacks included), downscaled detection, largest-face or tracked all-faces rule, margin
    and crop size; no files and no landmarks (scoring does not use them). Keys missing from `cfg` (the faces params
    of a model registered before they existed) take their defaults, which keep the old behaviour.

    Returns:
        One `{"frame", "track", "crop" (RGB uint8 crop_size^2 x 3), "box", "score", "detector"}` per kept face, in
        frame order.
    """
    cfg = with_defaults(cfg)
    chain, _ = _models({**cfg, "landmarks": False})
    tracker = FaceTracker(cfg.get("track_max_gap", TRACK_MAX_GAP))
    out = []
    for step, (idx, rgb, boxes, det_name) in enumerate(_detected(chain, frames, cfg["detect_max_side"], check_cancel)):
        if not boxes:
            continue
        kept = (list(zip(tracker.update(step, boxes), boxes, strict=True)) if cfg["all_faces"]
                else [(0, max(boxes, key=lambda b: b.area))])
        for track, box in kept:
            crop, _ = square_crop(rgb, box, cfg["margin"], cfg["crop_size"])
            out.append({"frame": idx, "track": track, "crop": crop, "score": box.score,
                        "box": [box.x0, box.y0, box.x1, box.y1], "detector": det_name})
    return out
