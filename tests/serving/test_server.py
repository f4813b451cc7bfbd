"""`dfd serve` over real HTTP on loopback: uploads good and bad, crops via /invocations, and the hot swap."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from dfd.platform.config import ServeParams
from dfd.serving.server import ModelHolder, create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(registered, loaded) -> Iterator[tuple[str, ModelHolder]]:
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(max_upload_bytes=2_000_000, poll_interval_s=0)
    with _Server(create_app(holder, cfg)) as url:
        yield url, holder


def _upload(url: str, path_or_bytes: Path | bytes, name: str) -> httpx.Response:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    resp = httpx.post(f"{url}/predict", files={"file": (name, data)}, timeout=60)
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"  # still serving after each request
    return resp


def test_uploads(server, loaded, media: dict[str, Path]) -> None:
    url, _ = server
    scorer = loaded.python_model.scorer
    image = _upload(url, media["face"], "face.png")
    assert image.status_code == 200
    body = image.json()
    assert body["p_fake"] == pytest.approx(scorer.score_path(media["face"]).p_fake, abs=1e-6)
    assert body["label"] in ("fake", "real") and body["faces"] == 1 and body["reason"] is None
    video = _upload(url, media["fake"], "clip.mp4")
    assert video.status_code == 200 and video.json()["frames"] == scorer.faces_cfg["frames_per_video"]
    assert video.json()["p_fake"] == pytest.approx(scorer.score_path(media["fake"]).p_fake, abs=1e-6)
    noface = _upload(url, media["noface"], "noface.png")
    assert noface.status_code == 200 and noface.json()["reason"] == "no_face" and noface.json()["p_fake"] is None
    text = _upload(url, media["notes"], "notes.txt")
    assert text.status_code == 415 and text.json()["reason"] == "unsupported"
    empty = _upload(url, b"", "empty.png")
    assert empty.status_code == 400 and empty.json()["reason"] == "empty"
    big = _upload(url, b"\0" * 2_100_000, "big.mp4")
    assert big.status_code == 413 and big.json()["reason"] == "too_large"
    cut = _upload(url, media["truncated"], "cut.mp4")
    assert cut.status_code == 422 and cut.json()["reason"] in ("truncated", "unreadable")


def test_invocations_and_version(server, loaded, registered) -> None:
    url, _ = server
    crops = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    resp = httpx.post(f"{url}/invocations", json={"inputs": crops.tolist()}, timeout=60)
    assert resp.status_code == 200
    assert resp.json()["predictions"] == pytest.approx(loaded.pyfunc.predict(crops).tolist(), abs=1e-6)
    bad = httpx.post(f"{url}/invocations", json={"inputs": [1, 2, 3]}, timeout=10)
    assert bad.status_code == 400 and "crops" in bad.json()["error"]
    info = httpx.get(f"{url}/version", timeout=10).json()
    assert info["version"] == registered.version and info["alias"] == "production"
    assert info["tags"].get("git_commit") is not None or info["tags"]


@pytest.mark.slow
def test_hot_swap_after_alias_move(registered, tmp_path: Path, media: dict[str, Path]) -> None:
    """A second registered version moves the alias; the polling server swaps to it, and answers meanwhile."""
    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks import register

    root = tmp_path / "project"
    shutil.copytree(registered.root, root)
    db = root / "mlflow.db"
    from tests.helpers import tiny_params

    params = tiny_params(root, mlflow={"tracking_uri": f"sqlite:///{db}"})
    tracker = Tracker.from_params(params, root)
    holder = ModelHolder(registered.uri, tracker.tracking_uri)
    old = holder.current.version
    with _Server(create_app(holder, ServeParams(poll_interval_s=0.5))) as url:
        holder.start(0.5)
        before = httpx.get(f"{url}/version", timeout=10).json()
        res = register.run(params, Layout.from_params(params, root), tracker)
        assert res.promoted and res.version != old
        deadline = time.time() + 120
        while httpx.get(f"{url}/version", timeout=10).json()["version"] != res.version:
            assert httpx.post(f"{url}/predict", files={"file": ("f.png", media["face"].read_bytes())},
                              timeout=60).status_code == 200
            assert time.time() < deadline, "the server did not pick up the new version"
            time.sleep(0.5)
        holder.stop()
    assert before["version"] == old and holder.swaps == 1
