"""Reading media: image and video checks, and uniform frame sampling that reads a video forward once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from dfd.data.video_open import ANY_VIDEO, VideoAllow, open_video, sniff_container

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})


_KINDS = {**dict.fromkeys(IMAGE_EXTS, "image"), **dict.fromkeys(VIDEO_EXTS, "video")}


def media_kind(path: str | Path) -> str | None:
    """'image', 'video', or None for a file that is neither (by the extension `Path.suffix` gives)."""
    name = path if isinstance(path, str) else str(path)  # str: no Path per file on a rerun (twice per file)
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1 or name[dot - 1] == "/" or "/" in name[dot:]:
        return None  # no suffix: none, a trailing dot, a hidden file's only dot, a dot in a folder's name
    return _KINDS.get(name[dot:].lower())


def check_media(path: Path) -> str | None:
    """Why `path` cannot be used, or None when it reads. Cheap: one decode per image, one frame per video."""
    if not path.exists():
        return "missing file"
    if not path.is_file():
        return "not a regular file"
    if path.stat().st_size == 0:
        return "zero-byte file"
    kind = media_kind(path)
    if kind == "image":
        return None if cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None else "unreadable or corrupt image"
    if kind == "video":
        try:
            container = sniff_container(path)
        except OSError as exc:
            return f"unreadable file ({type(exc).__name__})"
        if container is None:  # FFmpeg never sees it: no demuxer probes a file dfd cannot use
            return "unsupported video container (not MP4/QuickTime, Matroska/WebM or AVI by its first bytes)"
        cap = open_video(path)
        try:
            if not cap.isOpened():
                return "unreadable or corrupt video (cannot open)"
            ok, _ = cap.read()
            return None if ok else "corrupt video (no decodable frame)"
        finally:
            cap.release()
    return f"unsupported file type '{path.suffix}'"


def read_rgb(path: Path) -> np.ndarray | None:
    """An image as RGB uint8 (H, W, 3), or None when it cannot be decoded."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def sample_indices(total: int, n: int) -> list[int]:
    """`n` frame indices spread uniformly over `total` frames (all of them when there are fewer)."""
    if total <= 0:
        return []
    if total <= n:
        return list(range(total))
    return sorted({round(i) for i in np.linspace(0, total - 1, n)})


def sample_video_frames(path: Path, n: int, check_cancel: Callable[[], None] | None = None,
                        allow: VideoAllow = ANY_VIDEO) -> tuple[list[tuple[int, np.ndarray]], str | None]:
    """Read `n` uniformly spaced frames of a video, moving forward with grab() and decoding only what is kept.

    Seeking to each frame re-decodes from the previous keyframe every time; one forward pass does not.
    `check_cancel` is called before each frame and may raise to stop (a server request that timed out). FFmpeg
    opens the file under `allow` (`dfd.data.video_open`): another container does not open.

    Returns:
        (frame index, RGB frame) pairs, and a note when the file ended early or frames failed to decode.
    """
    cap = open_video(path, allow)
    if not cap.isOpened():
        return [], "cannot open video"
    # Portrait phone videos carry a rotation tag: let OpenCV apply it, so faces are upright for the detector.
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = sample_indices(total, n)
        frames: list[tuple[int, np.ndarray]] = []
        failed = 0
        pos = 0
        for idx in wanted:
            while pos < idx:
                if check_cancel is not None:
                    check_cancel()
                if not cap.grab():
                    return frames, f"video ended at frame {pos} of {total} (truncated?)"
                pos += 1
            if check_cancel is not None:
                check_cancel()
            ok, bgr = cap.read()
            pos += 1
            if not ok or bgr is None:
                failed += 1
                continue
            frames.append((idx, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        note = f"{failed} of {len(wanted)} sampled frames failed to decode" if failed else None
        return frames, note
    finally:
        cap.release()

