"""Opening a video so that FFmpeg itself holds the allow-lists: only the sniffed, allowed demuxer ever parses it.

Every `cv2.VideoCapture` of dfd goes through `open_video`. It reads the container from the file's first bytes
(no parser involved), refuses one that is not allowed before FFmpeg sees the file, and opens the rest with OpenCV's
FFmpeg backend only, handing FFmpeg (through `OPENCV_FFMPEG_CAPTURE_OPTIONS`, the AVDictionary OpenCV passes to
`avformat_open_input`):

- `input_format`: the sniffed container's demuxer, forced: FFmpeg probes no other demuxer;
- `format_whitelist`: the demuxers of the allowed containers (any other is refused by FFmpeg, sniff or not);
- `codec_whitelist`: the decoders of the allowed codecs: `avformat_find_stream_info` decodes sample frames to
  describe the streams and opens no other decoder (audio decoders included: dfd reads the video stream only);
- `protocol_whitelist`: `file` (no network, no `concat:`/`subfile:`, no reference that leaves the file).

Without `apiPreference=CAP_FFMPEG`, OpenCV falls back to its other backends when FFmpeg refuses a file: its own
MJPEG-in-AVI parser opened an AVI that the format whitelist had just refused (measured with opencv 5.1.0).

OpenCV reads the variable on every open, inside its own lock (`CvCapture_FFMPEG::open`), so its opens are already
one at a time; `open_video` sets the variable and opens under one lock of its own, so a thread never opens with
another thread's options. The variable exists from this module's import on (before any scoring thread starts), so
a later change replaces a value in place and never reallocates the environment under a concurrent `getenv`. In a
worker process that opens one file at a time the value is set once per allow-list. The variable keeps the last
open's value: a plain `cv2.VideoCapture` elsewhere in the process opens under it (unset it for one that must not).

What the lists do not cover: OpenCV opens the video stream's decoder itself (`avcodec_open2` on a context of its
own, without the whitelist): that decoder is initialised (from the container's codec header, no frame decoded)
before the caller compares the stream's codec with its list, and a caller must refuse a codec outside the list
before reading frames (`dfd.serving.media_checks.check_video` does).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import cv2

ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# dfd's container names (`serve.video_containers`) -> FFmpeg's demuxer (`mov` is "mov,mp4,m4a,3gp,3g2,mj2").
DEMUXERS = {"mp4": "mov", "matroska": "matroska", "avi": "avi"}
# dfd's codec names (`serve.video_codecs`) -> FFmpeg's software decoders of that codec (by the name FFmpeg matches
# against codec_whitelist: the decoder's, e.g. libdav1d for AV1, whichever the build has).
DECODERS = {"h264": ("h264",), "hevc": ("hevc",), "mpeg4": ("mpeg4",), "vp8": ("vp8", "libvpx"),
            "vp9": ("vp9", "libvpx-vp9"), "av1": ("libdav1d", "libaom-av1", "av1"), "mjpeg": ("mjpeg",)}
_QUICKTIME_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_lock = threading.Lock()
# Created now, at import (in the main thread, before the server's threads): later sets replace a value in place.
os.environ.setdefault(ENV, "protocol_whitelist;file")
# FFmpeg's own log: one "Codec (aac) not on whitelist" line per audio stream and open otherwise (thousands in an
# ingest); dfd reports every refusal with its own one-line reason. Read once, at OpenCV's first FFmpeg open; a
# value the user set is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")  # AV_LOG_FATAL


@dataclass(frozen=True)
class VideoAllow:
    """The containers and codecs a caller accepts (dfd's names: keys of DEMUXERS and DECODERS)."""

    containers: frozenset[str] = frozenset(DEMUXERS)
    codecs: frozenset[str] = frozenset(DECODERS)

    @classmethod
    def of(cls, containers: Collection[str], codecs: Collection[str]) -> VideoAllow:
        return cls(frozenset(containers), frozenset(codecs))


ANY_VIDEO = VideoAllow()  # every container and codec dfd decodes at all (ingest: datasets are these)


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


def decoder_names(codecs: Collection[str]) -> str:
    """FFmpeg's codec_whitelist for dfd codec names (comma-separated decoder names)."""
    return ",".join(name for codec in sorted(codecs) for name in DECODERS[codec])


def demuxer_names(containers: Collection[str]) -> str:
    """FFmpeg's format_whitelist for dfd container names."""
    return ",".join(DEMUXERS[c] for c in sorted(containers))


def capture_options(container: str, allow: VideoAllow) -> str:
    """The `OPENCV_FFMPEG_CAPTURE_OPTIONS` value (`key;value|key;value`) for a file of the sniffed `container`."""
    return (f"input_format;{DEMUXERS[container]}|format_whitelist;{demuxer_names(allow.containers)}|"
            f"codec_whitelist;{decoder_names(allow.codecs) or 'none'}|protocol_whitelist;file")


def open_video(path: Path, allow: VideoAllow = ANY_VIDEO) -> cv2.VideoCapture:
    """A capture of `path` by FFmpeg under the allow-lists; one that is not opened (FFmpeg never saw the file) when
    its first bytes name no allowed container. The caller checks `isOpened()` and releases it."""
    try:
        container = sniff_container(path)
    except OSError:
        container = None
    if container is None or container not in allow.containers:
        return cv2.VideoCapture()
    options = capture_options(container, allow)
    with _lock:
        if os.environ.get(ENV) != options:
            os.environ[ENV] = options
        return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
