"""FFmpeg holds the video allow-lists itself: a container outside them is refused before any demuxer or decoder
runs, by dfd's sniff and, should a file get past the sniff, by FFmpeg's own whitelists; an allowed one decodes."""

from __future__ import annotations

import os
import subprocess
import typing
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfd.data import video_open
from dfd.data.media import check_media, sample_video_frames
from dfd.data.video_open import ENV, VideoAllow, capture_options, open_video
from dfd.platform.config import ServeParams
from dfd.serving.media_scoring import load_frames


def _ffmpeg(out: Path, *codec: str) -> Path:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=10", "-frames:v", "6", *codec, str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("containers")
    writer = cv2.VideoWriter(str(d / "mjpg.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    h264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p")
    return {"flv": _ffmpeg(d / "clip.flv", "-c:v", "flv"), "ts": _ffmpeg(d / "clip.ts", *h264),
            "mp4": _ffmpeg(d / "clip.mp4", *h264), "avi": d / "mjpg.avi"}


def _frames(cap: cv2.VideoCapture) -> int:
    n = 0
    try:
        while cap.isOpened() and cap.read()[0]:
            n += 1
    finally:
        cap.release()
    return n


def test_names_match_the_serve_params() -> None:
    """Every container and codec `serve:` may name has an FFmpeg demuxer or decoder here, and nothing else does."""
    hints = typing.get_type_hints(ServeParams)
    assert set(typing.get_args(typing.get_args(hints["video_containers"])[0])) == set(video_open.DEMUXERS)
    assert set(typing.get_args(typing.get_args(hints["video_codecs"])[0])) == set(video_open.DECODERS)


def test_container_outside_the_list_never_reaches_a_decoder(clips: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """FLV and MPEG-TS (both open with a plain cv2.VideoCapture) are refused with a one-line reason, and no
    VideoCapture and no FFmpeg process is ever started for them; an allowed MP4/H.264 decodes every frame."""
    monkeypatch.delenv(ENV, raising=False)  # the last open_video's options stay in the environment: not for these
    disguised = {}
    for name in ("flv", "ts"):
        assert _frames(cv2.VideoCapture(str(clips[name]))) == 6  # FFmpeg would parse and decode them
        disguised[name] = tmp_path / f"{name}.mp4"  # under a video name: ingest's check reads its first bytes
        disguised[name].write_bytes(clips[name].read_bytes())
    opened: list[tuple] = []
    real_capture, real_popen = cv2.VideoCapture, subprocess.Popen

    def capture(*args: object) -> cv2.VideoCapture:  # counts the opens, then opens for real
        if args:
            opened.append(args)
        return real_capture(*args)

    def popen(*args: object, **kwargs: object) -> subprocess.Popen:
        opened.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(cv2, "VideoCapture", capture)
    monkeypatch.setattr(subprocess, "Popen", popen)
    faces = {"frames_per_video": 4}
    for name in ("flv", "ts"):
        frames, res = load_frames(clips[name], faces, ServeParams(), kind="video")
        assert not frames and res.reason == "unreadable" and "\n" not in res.detail
        assert "not an MP4/QuickTime, Matroska/WebM or AVI" in res.detail
        assert "unsupported video container" in str(check_media(disguised[name]))
        assert sample_video_frames(clips[name], 4) == ([], "cannot open video")
    assert opened == []  # nothing parsed them: no OpenCV open, no FFmpeg binary
    frames, res = load_frames(clips["mp4"], faces, ServeParams(), kind="video")
    assert res.reason is None and len(frames) == 4 and frames[0][1].shape == (48, 64, 3)
    assert opened  # the allowed one was opened (by both), under the lists


def test_ffmpeg_refuses_what_slips_past_the_sniff(clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a file's first bytes lie, FFmpeg still refuses any demuxer outside the list, and OpenCV does not fall
    back to a backend of its own (its MJPEG-in-AVI reader opened the AVI that FFmpeg refused)."""
    monkeypatch.setattr(video_open, "sniff_container", lambda _: "mp4")  # every file claims to be an MP4
    assert not open_video(clips["flv"]).isOpened()  # the mov demuxer is forced: FLV does not parse
    mp4_only = VideoAllow.of(["mp4"], ["h264"])
    assert _frames(open_video(clips["mp4"], mp4_only)) == 6
    # the format whitelist alone (no forced demuxer): FFmpeg probes, finds FLV / MPEG-TS / AVI, and refuses
    options = capture_options("mp4", mp4_only).split("|", 1)[1]
    assert "input_format" not in options
    monkeypatch.setenv(ENV, options)
    for name in ("flv", "ts", "avi"):
        cap = cv2.VideoCapture(str(clips[name]), cv2.CAP_FFMPEG)
        assert not cap.isOpened(), name
        any_backend = cv2.VideoCapture(str(clips[name]))
        if name == "avi":  # any backend: OpenCV's own MJPEG reader takes the AVI FFmpeg refused
            assert any_backend.isOpened() and any_backend.getBackendName() != "FFMPEG"
        any_backend.release()
    monkeypatch.undo()  # the sniff tells the truth again
    cap = open_video(clips["avi"])
    assert cap.getBackendName() == "FFMPEG" and _frames(cap) == 6


def test_options_follow_each_open_and_each_list(clips: dict[str, Path]) -> None:
    """OpenCV reads the options at every open: the same file opens or not as the list changes between opens."""
    assert _frames(open_video(clips["avi"], VideoAllow.of(["avi"], ["mjpeg"]))) == 6
    assert not open_video(clips["avi"], VideoAllow.of(["mp4", "matroska"], ["mjpeg"])).isOpened()
    assert _frames(open_video(clips["avi"], VideoAllow.of(["avi"], ["mjpeg"]))) == 6
    assert "codec_whitelist;mjpeg|" in os.environ[ENV] and "protocol_whitelist;file" in os.environ[ENV]
