"""`POST /predict?explain=1` on `dfd serve` (docs/guides/serving.md, "Explanations"): off by default, the
`dfd predict --report` content as JSON through the same upload and worker-process path as `/predict`, one explain
request at a time, and a worker killed at `serve.explain_timeout_s`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from dfd.platform.config import ReportParams, ServeParams
from dfd.serving.limits import ScoringSlots
from dfd.serving.server import ModelHolder, create_app
from tests.serving.test_server import _Server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BOUNDARY = "dfd-explain-test"


def _png(b64: str) -> Image.Image:
    data = base64.b64decode(b64, validate=True)
    assert data.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes every byte: a truncated PNG raises here
    return img


def _held_upload(data: bytes, name: str, go: threading.Event):
    """A multipart body that sends its first bytes, then waits for `go` before sending the rest (chunked)."""
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    yield data[:1024]
    go.wait(120)
    yield data[1024:]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def test_explain_off_is_a_clear_refusal(registered, loaded, media: dict[str, Path]) -> None:
    """With serve.explain off (the default) explain=1 is a 403 saying so, never an answer without the report;
    a value that is not a boolean is a 422."""
    assert ServeParams().explain is False and ServeParams().explain_faces is False
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    with _Server(create_app(holder, ServeParams(isolation="thread", poll_interval_s=0))) as url:
        files = {"file": ("face.png", media["face"].read_bytes())}
        off = httpx.post(f"{url}/predict?explain=1", files=files, timeout=60)
        bad = httpx.post(f"{url}/predict?explain=maybe", files=files, timeout=60)
    assert off.status_code == 403 and off.json()["reason"] == "explain_off" and "serve.explain" in off.json()["detail"]
    assert "p_fake" not in off.json()
    assert bad.status_code == 422 and bad.json()["reason"] == "bad_request"


def test_explain_answer_in_a_worker_one_at_a_time(registered, loaded, media: dict[str, Path]) -> None:
    """In a worker process: an explain request whose upload is still arriving holds the gate, so a second one gets
    503 with Retry-After before its body is read; the first then gets the report's content: the verdict the model
    gives the file, its gate verdict and version, agreement, tracks, a timeline PNG and one overlay per member."""
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    # Two slots: one torch thread per worker (backward passes with two threads fighting on a busy 2-core machine ran
    # 6x slower); the second worker loads beside the first.
    cfg = ServeParams(explain=True, explain_faces=True, max_concurrent=2, poll_interval_s=0, request_timeout_s=300,
                      explain_timeout_s=300, slot_wait_s=300)
    app = create_app(holder, cfg, report=ReportParams(heatmap_frames=2))
    data = media["fake"].read_bytes()
    go, first = threading.Event(), {}

    def post_first() -> None:
        first["r"] = httpx.post(f"{url}/predict?explain=1", content=_held_upload(data, "fake.mp4", go), timeout=600,
                                headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})

    t0 = time.monotonic()
    with _Server(app, start_timeout_s=600) as url:
        started_s = time.monotonic() - t0
        t = threading.Thread(target=post_first)
        t.start()
        try:
            _wait_for(lambda: app.state.explaining.ticket is not None)
            second = httpx.post(f"{url}/predict?explain=1", files={"file": ("face.png", media["face"].read_bytes())},
                                timeout=60)
            paths = httpx.post(f"{url}/predict?explain=1", json={"paths": ["x.mp4"]}, timeout=60)
        finally:
            t0 = time.monotonic()
            go.set()
            t.join(600)
        print(f"server start {started_s:.1f} s (worker load {app.state.pool.load_seconds[0]:.1f} s); "
              f"explain answer {time.monotonic() - t0:.1f} s")
        gate_after = app.state.explaining.ticket
    assert second.status_code == 503 and second.json()["reason"] == "explain_busy"
    assert int(second.headers["retry-after"]) >= 1
    assert paths.status_code == 400 and "one uploaded file" in paths.json()["error"]
    r = first["r"]
    assert r.status_code == 200, r.text[:500]
    assert gate_after is None  # released once answered
    body = r.json()
    own = loaded.python_model.scorer.score_path(media["fake"], limits=cfg)  # the same file scored in this process
    spec = loaded.python_model.spec
    assert body["verdict"]["p_fake"] == pytest.approx(own.p_fake, abs=1e-5)
    assert body["verdict"]["status"] == own.status and body["verdict"]["label"] == own.label
    assert body["agreement"] == pytest.approx(own.agreement)
    assert body["model"]["version"] == registered.version and body["model"]["gate"] == "passed"
    assert body["model"]["label"] == f"models:/{loaded.name}/{registered.version}"
    assert body["warning"] and "synthetic" in body["warning"].lower() and "x-model-warning" in r.headers
    assert body["input"]["sha256"] == hashlib.sha256(data).hexdigest() and body["input"]["size_bytes"] == len(data)
    assert body["input"]["name"] is None  # serve.log_names is off
    # The per-track table and the timeline, as the scorer gives them.
    assert [t["track"] for t in body["tracks"]] == [t["track"] for t in own.track_list]
    assert [t["n_frames"] for t in body["tracks"]] == [t["n_frames"] for t in own.track_list]
    assert {"members", "frames", "mean_side_px"} <= set(body["tracks"][0])
    assert [e["frame"] for e in body["timeline"]] == [e["frame"] for e in own.timeline]
    timeline = _png(body["timeline_png"])
    assert timeline.format == "PNG" and timeline.size == (630, 252)  # 7 x 2.8 inches at 90 dpi
    heat = body["heatmaps"]
    assert heat["omitted"] is None and "not a localisation" in heat["note"] and heat["toward"] == own.label
    assert 1 <= len(heat["frames"]) <= 2  # report.heatmap_frames=2, among the faces the verdict used
    assert set(heat["member_shares"]) == set(spec["members"])
    side = loaded.python_model.scorer.faces_cfg["crop_size"]
    for frame in heat["frames"]:
        assert set(frame["members_png"]) == set(spec["members"])  # one heatmap per member
        for b64 in [frame["face_png"], frame["ensemble_png"], *frame["members_png"].values()]:
            assert _png(b64).size == (side, side)


def test_explain_overrun_kills_its_worker_with_504(registered, loaded, media: dict[str, Path]) -> None:
    """An explain request past serve.explain_timeout_s (10 ms: no upload is decoded, let alone explained, in that)
    gets 504 and its worker is killed and replaced; /predict under request_timeout_s is then answered by the
    replacement."""
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(explain=True, max_concurrent=1, poll_interval_s=0, request_timeout_s=300,
                      explain_timeout_s=0.01, slot_wait_s=300)
    app = create_app(holder, cfg)
    data = media["face"].read_bytes()
    with _Server(app, start_timeout_s=600) as url:
        pool = app.state.pool
        (first,) = [w.proc.pid for w in pool._all]
        over = httpx.post(f"{url}/predict?explain=1", files={"file": ("face.png", data)}, timeout=300)
        ok = httpx.post(f"{url}/predict", files={"file": ("face.png", data)}, timeout=300)
        gate_after = app.state.explaining.ticket
    assert over.status_code == 504 and over.json()["reason"] == "timeout" and "0.01 s" in over.json()["detail"]
    assert pool.restarts == 1
    assert not Path(f"/proc/{first}").exists() or "Z" in Path(f"/proc/{first}/stat").read_text().split()[2]
    assert ok.status_code == 200 and ok.json()["p_fake"] == pytest.approx(
        loaded.python_model.scorer.score_path(media["face"]).p_fake, abs=1e-6)
    assert gate_after is None


def test_thread_slots_release_a_timed_out_scoring_when_it_stops() -> None:
    """With serve.isolation: thread, what a timed-out scoring guards (the explain gate) is released only once the
    scoring has actually stopped, not at its 504."""
    release, done = threading.Event(), []

    async def main() -> tuple[bool, bool]:
        slots = ScoringSlots(1, timeout_s=60)
        with pytest.raises(TimeoutError):
            await slots.run(lambda check: release.wait(30), timeout_s=0.05, on_done=lambda: done.append(1))
        at_timeout = bool(done)
        release.set()
        for _ in range(500):
            if done:
                break
            await asyncio.sleep(0.01)
        slots.shutdown()
        return at_timeout, bool(done)

    at_timeout, after = asyncio.run(main())
    assert (at_timeout, after) == (False, True)
