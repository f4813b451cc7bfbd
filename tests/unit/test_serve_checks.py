"""`dfd serve`'s guards without a model: header checks before decode, the token rules, crops and path lists."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfd.platform.config import ServeParams
from dfd.platform.errors import DfdError
from dfd.serving.auth import check_exposure, is_loopback, token_from_env
from dfd.serving.limits import BodyError
from dfd.serving.media_checks import Refusal, check_image, check_video, sniff_container
from dfd.serving.server import parse_crops, parse_paths


def png_bomb(path: Path, side: int) -> Path:
    """A grey side x side PNG written without ever holding its pixels (zero rows compress ~1000:1)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    comp, row = zlib.compressobj(9), b"\0" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _clip(path: Path, size: tuple[int, int], fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    for i in range(3):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    writer.release()
    return path


def test_image_header_checked_before_decode(tmp_path: Path) -> None:
    """Pixels come from the header: a 3000x3000 PNG bomb (a few KB) is refused without decoding it."""
    bomb = png_bomb(tmp_path / "bomb.png", 3000)
    assert bomb.stat().st_size < 20_000
    with pytest.raises(Refusal) as refused:
        check_image(bomb, ServeParams(max_image_pixels=8_000_000))
    assert refused.value.reason == "too_large" and "3000x3000" in refused.value.detail
    assert check_image(bomb, ServeParams(max_image_pixels=9_000_000)) == (3000, 3000)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 30, 3), np.uint8))
    assert check_image(small, ServeParams()) == (30, 20)
    with pytest.raises(Refusal, match=r"png is not in serve\.image_formats"):
        check_image(small, ServeParams(image_formats=["jpeg"]))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.gif")
    with pytest.raises(Refusal, match="gif"):
        check_image(tmp_path / "a.gif", ServeParams())
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(Refusal) as junk:
        check_image(tmp_path / "junk.png", ServeParams())
    assert junk.value.reason == "unreadable"


def test_video_container_codec_and_size(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "c.mp4", (64, 48))
    header = check_video(clip, ServeParams())
    assert (header.container, header.codec, header.width, header.height) == ("mp4", "mpeg4", 64, 48)
    for cfg, reason, words in [(ServeParams(video_containers=["matroska"]), "unsupported", "container mp4"),
                               (ServeParams(video_codecs=["h264"]), "unsupported", "codec mpeg4"),
                               (ServeParams(max_video_pixels=64 * 47), "too_large", "64x48"),
                               (ServeParams(max_video_frames=2), "too_long", "3 frames")]:
        with pytest.raises(Refusal) as refused:
            check_video(clip, cfg)
        assert refused.value.reason == reason and words in refused.value.detail
    avi = _clip(tmp_path / "c.avi", (32, 32), "MJPG")
    assert sniff_container(avi) == "avi" and check_video(avi, ServeParams()).codec == "mjpeg"
    (tmp_path / "x.mp4").write_bytes(b"GIF89a" + b"\0" * 100)  # another format under a video name
    with pytest.raises(Refusal) as other:
        check_video(tmp_path / "x.mp4", ServeParams())
    assert other.value.reason == "unreadable" and sniff_container(tmp_path / "x.mp4") is None


def test_token_and_exposure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFD_TEST_TOKEN", raising=False)
    assert token_from_env("DFD_TEST_TOKEN") is None
    monkeypatch.setenv("DFD_TEST_TOKEN", "short")
    with pytest.raises(DfdError, match="shorter than 16"):
        token_from_env("DFD_TEST_TOKEN")
    monkeypatch.setenv("DFD_TEST_TOKEN", "a" * 32)
    assert token_from_env("DFD_TEST_TOKEN") == "a" * 32
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("myhost")
    check_exposure("127.0.0.1", None, False, "DFD_TEST_TOKEN")  # loopback: no token needed
    check_exposure("0.0.0.0", "a" * 32, False, "DFD_TEST_TOKEN")  # a token: anywhere
    check_exposure("0.0.0.0", None, True, "DFD_TEST_TOKEN")  # --insecure: the operator's choice, logged
    with pytest.raises(DfdError, match=r"refusing to serve on 0\.0\.0\.0 without a token.*DFD_TEST_TOKEN"):
        check_exposure("0.0.0.0", None, False, "DFD_TEST_TOKEN")
    with pytest.raises(DfdError) as refused:  # the hint never suggests a tokenless proxy
        check_exposure("0.0.0.0", None, False, "DFD_TEST_TOKEN")
    assert "behind a reverse proxy too a token is required" in str(refused.value.hint)


def test_several_tokens_for_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    """$DFD_SERVE_TOKEN and a comma-separated $DFD_SERVE_TOKENS together, each checked for length, no repeats."""
    from dfd.serving.auth import tokens_from_env

    monkeypatch.setenv("DFD_T1", "a" * 20)
    monkeypatch.setenv("DFD_T2", "  " + "b" * 20 + " ," + "c" * 20 + "," + "a" * 20 + ",")
    monkeypatch.delenv("DFD_T3", raising=False)
    assert tokens_from_env("DFD_T1", "DFD_T2", "DFD_T3") == ["a" * 20, "b" * 20, "c" * 20]
    monkeypatch.setenv("DFD_T2", "c" * 20 + ",short")
    with pytest.raises(DfdError, match="DFD_T2"):
        tokens_from_env("DFD_T1", "DFD_T2")


@pytest.mark.parametrize(("inputs", "status"), [
    ([[[[300, 0, 0]]]], 422), ([[[[-1, 0, 0]]]], 422), ([[[[0.5, 0, 0]]]], 400), ([[[["a", "b", "c"]]]], 400),
    ([[[[True, False, True]]]], 400), ([[[[10 ** 30, 0, 0]]]], 400), ([[[[1, 2, 3]], [[1, 2]]]], 400),
    ([[[]]], 400), ([1, 2, 3], 400), (None, 400), ({"a": 1}, 400), ([[[[float("nan"), 0, 0]]]], 400),
])
def test_bad_crops_are_4xx(inputs: object, status: int) -> None:
    with pytest.raises(BodyError) as refused:
        parse_crops({"inputs": inputs})
    assert refused.value.status == status


def test_good_crops_and_paths() -> None:
    crops = parse_crops({"instances": [[[[0, 128, 255]] * 2] * 2]})
    assert crops.dtype == np.uint8 and crops.shape == (1, 2, 2, 3) and crops.max() == 255
    assert parse_crops({"inputs": [[[[12.0, 0.0, 3.0]]]]}).tolist() == [[[[12, 0, 3]]]]  # whole floats are fine
    assert parse_paths({"paths": ["/a.png", "/b.mp4"], "aggregate": "mean"}, 2) == (["/a.png", "/b.mp4"], "mean")
    for payload, status in [({"paths": ["/a\0b"]}, 400), ({"paths": "/etc"}, 400), ({"paths": []}, 400),
                            ({"paths": [""]}, 400), ({"paths": [1]}, 400), ([1], 400), ({"paths": ["x"] * 3}, 413),
                            ({"paths": ["/" + "a" * 5000]}, 400)]:
        with pytest.raises(BodyError) as refused:
            parse_paths(payload, 2)
        assert refused.value.status == status, payload


def test_only_the_plugin_of_an_allowed_sniffed_format_parses_an_image(tmp_path: Path, monkeypatch) -> None:
    """Pillow is handed one plugin, chosen by the first bytes and the allow-list; a GIF, or junk, meets none."""
    from PIL import Image

    from dfd.serving.media_scoring import sniff_kind

    opened: list[list[str] | None] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, mode="r", formats=None: opened.append(formats) or real_open(
        fp, mode, formats))
    png, gif = tmp_path / "a.png", tmp_path / "b.gif"
    Image.new("RGB", (30, 20)).save(png)
    Image.new("RGB", (8, 8)).save(gif)
    assert check_image(png, ServeParams()) == (30, 20) and opened == [["PNG"]]
    with pytest.raises(Refusal, match=r"gif is not in serve\.image_formats"):
        check_image(gif, ServeParams())
    renamed = tmp_path / "c.png"  # a GIF named .png: the bytes decide, and GIF is not allowed
    renamed.write_bytes(gif.read_bytes())
    with pytest.raises(Refusal, match=r"gif is not in serve\.image_formats"):
        check_image(renamed, ServeParams())
    junk = tmp_path / "d.png"
    junk.write_bytes(b"\x00\x01 no image format starts like this" * 4)
    with pytest.raises(Refusal) as refused:
        check_image(junk, ServeParams())
    assert refused.value.reason == "unreadable"
    assert sniff_kind(gif) == "image" and sniff_kind(junk) == "video"
    assert opened == [["PNG"]]  # neither the GIF, the junk nor the kind checks reached a Pillow plugin


def test_worker_spec_pins_registry_versions_and_keeps_folders() -> None:
    """A registry model is pinned to its version (an alias move is the poller's to decide); a folder (`serve --from`'s
    checked private copy) is loaded by its path even though its manifest names a registry version: the workers must
    score with the files that were checked, not fetch that version from whatever registry they can reach."""
    from dfd.serving.registry_model import LoadedModel
    from dfd.serving.workers import ModelSpec

    registry = LoadedModel("models:/m@production", None, None, name="m", version="7", alias="production")
    spec = ModelSpec.of(registry, "sqlite:///x.db", ServeParams())
    assert (spec.uri, spec.version) == ("models:/m/7", "7")
    folder = LoadedModel("/tmp/dfd-serve-copy/model", None, None, name="m", version="7")
    spec = ModelSpec.of(folder, "sqlite:///x.db", ServeParams(engine="onnxruntime"))
    assert (spec.uri, spec.version, spec.engine) == ("/tmp/dfd-serve-copy/model", None, "onnxruntime")
