"""What a media file claims to be, read from its header before anything is decoded, checked against `serve:` limits.

A hostile file is cheap to make and expensive to decode: a 400 KB PNG that claims 20000x20000 pixels, an 8K video,
or a container or codec whose FFmpeg parser nobody needed. These checks read only headers: Pillow's header parser
for images (no pixel is decoded), the first bytes for the container (before FFmpeg opens the file), and the stream
header OpenCV reports for the codec and frame size (before any frame is read).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2

from dfd.platform.config import ServeParams

# Pillow's format names -> the names `serve.image_formats` uses.
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "BMP": "bmp", "WEBP": "webp", "GIF": "gif", "TIFF": "tiff"}
# FourCC (as OpenCV reports the stream's codec tag, or the tag FFmpeg maps its codec id to) -> codec name.
_CODECS = {
    **dict.fromkeys(("avc1", "avc3", "h264", "x264", "davc"), "h264"),
    **dict.fromkeys(("hvc1", "hev1", "hevc", "h265", "x265"), "hevc"),
    **dict.fromkeys(("mp4v", "fmp4", "xvid", "divx", "dx50", "mp42", "mp43"), "mpeg4"),
    "vp80": "vp8", **dict.fromkeys(("vp90", "vp09"), "vp9"), **dict.fromkeys(("av01", "av1 "), "av1"),
    **dict.fromkeys(("mjpg", "mjpa", "mjpb", "jpeg", "avrn"), "mjpeg"),
}
_QUICKTIME_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


class Refusal(Exception):
    """A file the limits refuse: `reason` is a result reason (`too_large`, `unsupported`, `unreadable`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class VideoHeader:
    """What the container and stream headers say about a video."""

    container: str
    codec: str  # a name from _CODECS, else the raw FourCC
    width: int
    height: int
    frames: int
    fps: float


def image_header(path: Path) -> tuple[str, int, int] | None:
    """(format, width, height) from an image's header (no pixel decoded), or None when Pillow does not know it.

    Raises:
        Refusal: Pillow's own decompression-bomb guard fired (over ~179 MP: too large whatever the limit).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller applies its own limit
            with Image.open(path) as img:  # lazy: reads the header only
                fmt = img.format or "?"
                return _PIL_FORMATS.get(fmt, fmt.lower()), int(img.size[0]), int(img.size[1])
    except Image.DecompressionBombError as exc:
        raise Refusal("too_large", f"decompression bomb: {exc}"[:200]) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):  # Pillow's plugins raise all of these
        return None


def sniff_container(path: Path) -> str | None:
    """'mp4' (ISO/QuickTime), 'matroska' (MKV/WebM) or 'avi' from the first bytes; None for anything else."""
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) >= 8 and head[4:8] in _QUICKTIME_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    return None


def video_header(path: Path, container: str) -> VideoHeader | None:
    """The stream header as OpenCV's FFmpeg backend reports it on opening (no frame read); None when it won't open."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        tag = int(cap.get(cv2.CAP_PROP_FOURCC))
        fourcc = "".join(chr((tag >> (8 * i)) & 0xFF) for i in range(4)).lower()
        return VideoHeader(container, _CODECS.get(fourcc, fourcc.strip() or "unknown"),
                           int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                           int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0))
    finally:
        cap.release()


def check_image(path: Path, limits: ServeParams) -> tuple[int, int]:
    """The image's (width, height) when its format and pixel count are allowed; else raises `Refusal`."""
    header = image_header(path)
    if header is None:
        raise Refusal("unreadable", "the image does not decode")
    fmt, w, h = header
    if fmt not in limits.image_formats:
        raise Refusal("unsupported", f"image format {fmt} is not in serve.image_formats")
    if w * h > limits.max_image_pixels:
        raise Refusal("too_large", f"{w}x{h} pixels; limit serve.max_image_pixels={limits.max_image_pixels}")
    return w, h


def check_video(path: Path, limits: ServeParams) -> VideoHeader:
    """The video's header when its container, codec, frame size and length are allowed; else raises `Refusal`."""
    container = sniff_container(path)
    if container is None:
        raise Refusal("unreadable", "not an MP4/QuickTime, Matroska/WebM or AVI file (corrupt, or another format)")
    if container not in limits.video_containers:
        raise Refusal("unsupported", f"container {container} is not in serve.video_containers")
    header = video_header(path, container)
    if header is None:
        raise Refusal("unreadable", "the video does not open (corrupt, truncated or not a video)")
    if header.codec not in limits.video_codecs:
        raise Refusal("unsupported", f"video codec {header.codec} is not in serve.video_codecs")
    if header.width * header.height > limits.max_video_pixels:
        raise Refusal("too_large", f"{header.width}x{header.height} frames; limit "
                                   f"serve.max_video_pixels={limits.max_video_pixels}")
    seconds = header.frames / header.fps if header.fps > 0 else 0.0
    if header.frames > limits.max_video_frames or seconds > limits.max_video_seconds:
        raise Refusal("too_long", f"{header.frames} frames, {seconds:.0f} s; limits {limits.max_video_frames} "
                                  f"frames, {limits.max_video_seconds:.0f} s")
    return header
