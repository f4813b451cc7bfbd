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

    def __init__(self, app, start_timeout_s: float = 30.0) -> None:  # longer for worker processes to load
        import uvicorn

        self.start_timeout_s = start_timeout_s
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + self.start_timeout_s
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
    cfg = ServeParams(max_upload_bytes=2_000_000, poll_interval_s=0, isolation="thread")
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
    assert resp.headers["X-Model-Warning"].startswith("Trained on synthetic faces")  # every answer says it
    info = httpx.get(f"{url}/version", timeout=10).json()
    assert "scores on real media mean nothing" in info["warning"]
    assert info["version"] == registered.version and info["alias"] == "production"
    from mlflow import MlflowClient

    stored = MlflowClient(registered.tracking_uri).get_model_version(info["name"], registered.version).tags
    for key in ("git_commit", "params_hash", "dvc_data_hash", "mlflow_run_id"):  # the version's lineage, as stored
        assert info["tags"][key] == stored[key] and stored[key], key


def test_path_list_only_under_path_roots(registered, loaded, media: dict[str, Path], tmp_path: Path) -> None:
    """JSON path lists score server-side files under `serve.path_roots`; anything else is refused, whole."""
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    scorer = loaded.python_model.scorer
    outside = tmp_path / "outside.png"
    shutil.copy(media["face"], outside)
    root = media["face"].parent
    with _Server(create_app(holder, ServeParams(poll_interval_s=0, path_roots=[str(root)], isolation="thread"))) as url:
        ok = httpx.post(f"{url}/predict", json={"paths": [str(media["face"]), str(media["noface"])]}, timeout=60)
        assert ok.status_code == 200, ok.text
        rows = ok.json()["results"]
        assert [r["path"] for r in rows] == [str(media["face"]), str(media["noface"])]
        assert rows[0]["p_fake"] == pytest.approx(scorer.score_path(media["face"]).p_fake, abs=1e-6)
        assert rows[1]["reason"] == "no_face"
        # Outside the roots, also by `..` or a symlink: refused before anything is read.
        link = root / "escape.png"
        link.symlink_to(outside)
        try:
            for path in (str(outside), f"{root}/../{outside.parent.name}/{outside.name}", str(link)):
                bad = httpx.post(f"{url}/predict", json={"paths": [str(media["face"]), path]}, timeout=10)
                assert bad.status_code == 403 and bad.json()["reason"] == "forbidden", path
        finally:
            link.unlink()
        junk = httpx.post(f"{url}/predict", json={"files": ["x"]}, timeout=10)
        assert junk.status_code == 400 and junk.json()["reason"] == "bad_request"
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    with _Server(create_app(holder, ServeParams(poll_interval_s=0, isolation="thread"))) as url:  # no roots: off
        off = httpx.post(f"{url}/predict", json={"paths": [str(media["face"])]}, timeout=10)
        assert off.status_code == 403 and "path_roots" in off.json()["detail"]


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
    # A request still scoring on the old version when the alias moves: its scoring waits for `release` (the real
    # scorer, called through), so the swap happens while it is in flight.
    started, release = threading.Event(), threading.Event()
    old_scorer = holder.current.python_model.scorer
    real_score = old_scorer.score_upload

    def held_score(*args, **kwargs):
        started.set()
        assert release.wait(120)
        return real_score(*args, **kwargs)

    old_scorer.score_upload = held_score
    in_flight: dict[str, httpx.Response] = {}
    with _Server(create_app(holder, ServeParams(poll_interval_s=0.5, isolation="thread"))) as url:
        holder.start(0.5)
        before = httpx.get(f"{url}/version", timeout=10).json()
        request = threading.Thread(target=lambda: in_flight.update(resp=httpx.post(
            f"{url}/predict", files={"file": ("f.png", media["face"].read_bytes())}, timeout=120)))
        request.start()
        assert started.wait(60)
        res = register.run(params, Layout.from_params(params, root), tracker)
        assert res.promoted and res.version != old
        deadline = time.time() + 120
        while holder.current.version != res.version:
            assert time.time() < deadline, "the server did not pick up the new version"
            time.sleep(0.2)
        assert request.is_alive()  # still scoring on the old model after the swap
        release.set()
        request.join(60)
        after = httpx.post(f"{url}/predict", files={"file": ("f.png", media["face"].read_bytes())}, timeout=60)
        now = httpx.get(f"{url}/version", timeout=10).json()
        holder.stop()
    assert before["version"] == old and holder.swaps == 1 and now["version"] == res.version
    assert in_flight["resp"].status_code == 200 and in_flight["resp"].json()["model_version"] == old
    assert after.status_code == 200 and after.json()["model_version"] == res.version
