"""What a media file claims to be, read from its header before anything is decoded, checked against `serve:` limits.

A hostile file is cheap to make and expensive to decode: a 400 KB PNG that claims 20000x20000 pixels, an 8K video,
or a container or codec whose FFmpeg parser nobody needed. These checks read only headers: Pillow's header parser
for images (no pixel is decoded), the first bytes for the container (before FFmpeg opens the file), and the stream
header OpenCV reports for the codec and frame size (before any frame is read). FFmpeg itself holds the same
lists wherever it opens a file (`dfd.data.video_open`: the sniffed demuxer forced, format, codec and protocol
whitelists), so a file that slips past a check in Python still meets no parser outside them.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import cv2

from dfd.data.video_open import DEMUXERS, VideoAllow, decoder_names, demuxer_names, open_video, sniff_container
from dfd.platform.config import ServeParams

__all__ = ["Refusal", "VideoHeader", "check_frames", "check_image", "check_video", "image_header", "jpeg_scans",
           "sniff_container", "sniff_image", "video_allow", "video_header"]

# The names `serve.image_formats` uses -> Pillow's format (plugin) names.
_PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "webp": "WEBP", "gif": "GIF", "tiff": "TIFF",
              "jpeg2000": "JPEG2000", "ppm": "PPM", "psd": "PSD", "ico": "ICO"}
# FourCC (as OpenCV reports the stream's codec tag, or the tag FFmpeg maps its codec id to) -> codec name.
_CODECS = {
    **dict.fromkeys(("avc1", "avc3", "h264", "x264", "davc"), "h264"),
    **dict.fromkeys(("hvc1", "hev1", "hevc", "h265", "x265"), "hevc"),
    **dict.fromkeys(("mp4v", "fmp4", "xvid", "divx", "dx50", "mp42", "mp43"), "mpeg4"),
    "vp80": "vp8", **dict.fromkeys(("vp90", "vp09"), "vp9"), **dict.fromkeys(("av01", "av1 "), "av1"),
    **dict.fromkeys(("mjpg", "mjpa", "mjpb", "jpeg", "avrn"), "mjpeg"),
}
_SOS = b"\xff\xda"  # JPEG start-of-scan marker: one per scan (entropy-coded data stuffs every 0xFF with 0x00)
_TOO_MANY_PIXELS = b"exceeds specified max pixel count"  # FFmpeg's words when a decoded frame passes -max_pixels


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


# An image's format from its first bytes, before any parser sees it: only the Pillow plugin of an allowed, sniffed
# format ever parses an upload (`Image.open(formats=...)`); left to itself Pillow would offer the bytes to each of its
# ~40 plugins in turn, decoders for formats the server never accepts among them.
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
                (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"8BPS", "psd"), (b"\x00\x00\x01\x00", "ico"),
                (b"\x00\x00\x00\x0cjP  ", "jpeg2000"), (b"\xffO\xffQ", "jpeg2000"), (b"BM", "bmp"))


def sniff_image(head: bytes) -> str | None:
    """The image format the first 16 bytes announce (`serve.image_formats` names), or None."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "ppm"
    return next((fmt for magic, fmt in _IMAGE_MAGIC if head.startswith(magic)), None)


def image_header(path: Path, allowed: Collection[str] | None = None) -> tuple[str, int, int] | None:
    """(format, width, height) from an image's header (no pixel decoded), or None when its first bytes name no image
    format. A format outside `allowed` is named with size (0, 0), unparsed; None: every sniffed format is parsed.

    Raises:
        Refusal: Pillow's own decompression-bomb guard fired (over ~179 MP: too large whatever the limit).
    """
    from PIL import Image, UnidentifiedImageError

    with path.open("rb") as f:
        fmt = sniff_image(f.read(16))
    if fmt is None:
        return None
    if allowed is not None and fmt not in allowed:
        return fmt, 0, 0
    pil = _PIL_NAMES.get(fmt, fmt.upper())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller applies its own limit
            with Image.open(path, formats=[pil]) as img:  # lazy: reads the header only, with that one plugin
                return fmt, int(img.size[0]), int(img.size[1])
    except Image.DecompressionBombError as exc:
        raise Refusal("too_large", f"decompression bomb: {exc}"[:200]) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):  # Pillow's plugins raise all of these
        return None


def video_allow(limits: ServeParams) -> VideoAllow:
    """The containers and codecs `serve:` allows, as FFmpeg's allow-lists are built from them."""
    return VideoAllow.of(limits.video_containers, limits.video_codecs)


def video_header(path: Path, container: str, allow: VideoAllow | None = None) -> VideoHeader | None:
    """The stream header as OpenCV's FFmpeg backend reports it on opening (no frame read), FFmpeg holding `allow`
    (`dfd.data.video_open`); None when it won't open."""
    cap = open_video(path, allow or VideoAllow.of([container], VideoAllow().codecs))
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
    header = image_header(path, limits.image_formats)
    if header is None:
        raise Refusal("unreadable", "the image does not decode")
    fmt, w, h = header
    if fmt not in limits.image_formats:
        raise Refusal("unsupported", f"image format {fmt} is not in serve.image_formats")
    if w * h > limits.max_image_pixels:
        raise Refusal("too_large", f"{w}x{h} pixels; limit serve.max_image_pixels={limits.max_image_pixels}")
    if fmt == "jpeg" and (scans := jpeg_scans(path, limits.max_jpeg_scans)) > limits.max_jpeg_scans:
        raise Refusal("too_large", f"over {limits.max_jpeg_scans} JPEG scans (found {scans} so far); limit "
                                   "serve.max_jpeg_scans")
    return w, h


def jpeg_scans(path: Path, stop_after: int) -> int:
    """SOS markers in a JPEG file's bytes (read in chunks, never decoded), counting up to `stop_after` + 1."""
    count, tail = 0, b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            data = tail + chunk
            count += data.count(_SOS) - tail.count(_SOS)
            if count > stop_after:
                break
            tail = data[-1:]
    return count


def check_frames(path: Path, max_pixels: int, timeout_s: float, memory_bytes: int = 0,
                 check_cancel: Callable[[], None] | None = None, container: str | None = None,
                 allow: VideoAllow | None = None) -> None:
    """Decode every video frame in an FFmpeg process bounded by `-max_pixels`: the stream header is one frame's
    size, yet H.264 may switch resolution at a new SPS and VP9 per frame (and OpenCV rescales such frames to the
    first size without saying so). The FFmpeg binary parses the file in its own short-lived process, under
    `memory_bytes` of address space, with the demuxer of the sniffed `container` forced (no probing of others) and
    FFmpeg's format, codec and protocol whitelists built from `allow` (as `open_video` passes them to OpenCV's
    FFmpeg), and is killed at `timeout_s` or when `check_cancel` raises.

    Raises:
        Refusal: A decoded frame over `max_pixels` (too_large), or the decode outlasted `timeout_s` (too_long).
    """
    import imageio_ffmpeg

    def limit() -> None:  # in the child, before exec: FFmpeg never maps more than this
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    forced = ["-f", DEMUXERS[container]] if container in DEMUXERS else []
    if allow is not None:  # input options: the demuxer and every decoder the binary opens hold them
        forced += ["-format_whitelist", demuxer_names(allow.containers),
                   "-codec_whitelist", decoder_names(allow.codecs) or "none"]
    forced += ["-protocol_whitelist", "file"]
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-max_pixels",
           str(max_pixels), *forced, "-i", str(path), "-map", "0:v:0", "-an", "-sn", "-dn", "-f", "null", "-"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=limit)  # only setrlimit runs between fork and exec
    over = threading.Event()

    def watch() -> None:  # FFmpeg writes a line per error and goes on: stop it at the first frame too large
        assert proc.stderr is not None
        for line in proc.stderr:
            if _TOO_MANY_PIXELS in line:
                over.set()
                proc.kill()
                break

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and not over.is_set():
            if check_cancel is not None:
                check_cancel()
            if time.monotonic() > deadline:
                raise Refusal("too_long", f"decoding every frame took over {timeout_s:.0f} s")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()
    if over.is_set():
        raise Refusal("too_large", f"a decoded frame is over serve.max_video_pixels={max_pixels} pixels (the "
                                   "stream changes resolution after its header)")


def check_video(path: Path, limits: ServeParams) -> VideoHeader:
    """The video's header when its container, codec, frame size and length are allowed; else raises `Refusal`."""
    container = sniff_container(path)
    if container is None:
        raise Refusal("unreadable", "not an MP4/QuickTime, Matroska/WebM or AVI file (corrupt, or another format)")
    if container not in limits.video_containers:
        raise Refusal("unsupported", f"container {container} is not in serve.video_containers")
    header = video_header(path, container, video_allow(limits))
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
