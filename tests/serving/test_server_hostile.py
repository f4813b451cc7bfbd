"""`dfd serve` as an attacker sees it, over real HTTP on loopback: the token, streaming limits, bad input, timeouts.

The server runs in a thread of this process (uvicorn); uploads whose server-side cost is measured are sent from a
child process, so that this process's write counters (/proc/self/io) count the server's writes only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dfd.platform.config import ServeParams
from dfd.serving.server import ModelHolder, create_app
from tests.serving.test_server import _Server
from tests.unit.test_serve_checks import png_bomb

TOKEN = "test-token-" + "x" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# A child process sending a multipart body with Transfer-Encoding: chunked (a generator body: no Content-Length).
CHUNKED_CLIENT = r"""
import sys, httpx
url, total, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def body():
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'
    for _ in range(total // 65536):
        yield b"\0" * 65536
    yield b"\r\n--b--\r\n"
try:
    r = httpx.post(url, content=body(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=b", "authorization": "Bearer " + token})
    print(r.status_code, r.json()["reason"])
except httpx.HTTPError as exc:
    print("client-error", type(exc).__name__)
"""


def _written() -> int:
    """Bytes this process has passed to write calls so far (files, pipes, sockets)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


@pytest.fixture(scope="module")
def guarded(registered, loaded, media: dict[str, Path]) -> Iterator[tuple[str, ModelHolder]]:
    """A server with a token, a 1 MB upload limit, small JSON and path limits, and path lists on."""
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(max_upload_bytes=1_000_000, max_json_bytes=200_000, max_paths=3, max_image_pixels=4_000_000,
                      poll_interval_s=0, path_roots=[str(media["face"].parent)], isolation="thread")
    with _Server(create_app(holder, cfg, token=TOKEN)) as url:
        yield url, holder


def test_token_guards_every_route_but_health(guarded) -> None:
    url, holder = guarded
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        for method, path in (("GET", "/version"), ("POST", "/predict"), ("POST", "/invocations"),
                             ("GET", "/docs"), ("GET", "/openapi.json")):
            r = httpx.request(method, f"{url}{path}", headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["reason"] == "unauthorized", (path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/version", headers=AUTH, timeout=10).status_code == 200
    # /health says degraded when the registry poll fails, never the exception's text (it can name URIs).
    holder.last_error = "OperationalError: cannot open sqlite:////srv/secret/mlflow.db"
    try:
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.json()["status"] == "degraded" and health.json()["version"] == holder.current.version
        assert "secret" not in health.text and "sqlite" not in health.text
    finally:
        holder.last_error = None


def test_serve_refuses_open_bind_without_token(tmp_path: Path) -> None:
    """`dfd serve --host 0.0.0.0` without a token: one line, exit 2, before any model is loaded."""
    env = {k: v for k, v in os.environ.items() if k != "DFD_SERVE_TOKEN"}
    dfd = Path(sys.executable).parent / "dfd"
    proc = subprocess.run([str(dfd), "serve", "--host", "0.0.0.0", "--model", "models:/none@nowhere"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve on 0.0.0.0 without a token" in lines[0]


def test_chunked_upload_refused_while_streaming(guarded) -> None:
    """A chunked upload of 3x the limit: 413, and the server wrote no more than the limit while refusing it."""
    url, _ = guarded
    limit = 1_000_000
    before = _written()
    out = subprocess.run([sys.executable, "-c", CHUNKED_CLIENT, f"{url}/predict", str(3 * limit), TOKEN],
                         capture_output=True, text=True, timeout=120)
    written = _written() - before
    assert out.stdout.split() == ["413", "too_large"], out.stdout + out.stderr
    assert written < 1.2 * limit, f"the server wrote {written} bytes refusing a {3 * limit}-byte upload"
    # Without the token: 401 before the body is read, so nothing of it is written at all.
    before = _written()
    out = subprocess.run([sys.executable, "-c", CHUNKED_CLIENT, f"{url}/predict", str(3 * limit), "wrong"],
                         capture_output=True, text=True, timeout=120)
    written = _written() - before
    assert out.stdout.split() == ["401", "unauthorized"] and written < 0.05 * limit, (out.stdout, written)
    ok = httpx.post(f"{url}/predict", files={"file": ("f.png", b"x" * 10)}, headers=AUTH, timeout=30)
    assert ok.status_code == 415 and ok.json()["reason"] == "unsupported"  # and it keeps serving


def test_slow_upload_gets_408(registered, loaded) -> None:
    """A client that stops sending mid-body holds its upload slot only until `request_timeout_s`: then a 408."""
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    with _Server(create_app(holder, ServeParams(request_timeout_s=0.5, poll_interval_s=0, isolation="thread"))) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                         b"--b\r\nContent-Disposition: form-data; name=\"file\"; "
                         b"filename=\"a.mp4\"\r\n\r\n0123456789")  # ...and nothing more
            t0 = time.monotonic()
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert time.monotonic() - t0 < 10
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"


def _post(url: str, path: str, **kw) -> httpx.Response:
    resp = httpx.post(f"{url}{path}", headers={**AUTH, **kw.pop("headers", {})}, timeout=60, **kw)
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"  # still serving
    return resp


def test_bad_inputs_are_4xx(guarded, media: dict[str, Path], tmp_path: Path) -> None:
    url, _ = guarded
    bomb = png_bomb(tmp_path / "bomb.png", 3000).read_bytes()  # 9 MP from a ~10 KB file; the limit here is 4 MP
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.gif")
    root = media["face"].parent
    json_h = {"content-type": "application/json"}
    cases = [
        ("/invocations", {"json": {"inputs": [[[[300, 0, 0]]]]}}, 422, "out_of_range"),
        ("/invocations", {"json": {"inputs": [[[[-1, 0, 0]]]]}}, 422, "out_of_range"),
        ("/invocations", {"json": {"inputs": [[[[0.5, 0, 0]]]]}}, 400, "bad_request"),
        ("/invocations", {"json": {"inputs": [[[["a", "b", "c"]]]]}}, 400, "bad_request"),
        ("/invocations", {"json": {"inputs": [[[[10 ** 30, 0, 0]]]]}}, 400, "bad_request"),
        ("/invocations", {"json": [[1, 2, 3]]}, 400, "bad_request"),
        ("/invocations", {"content": "[" * 100_000 + "]" * 100_000, "headers": json_h}, 400, "bad_request"),
        ("/invocations", {"content": b"\xff\xfe{", "headers": json_h}, 400, "bad_request"),
        ("/invocations", {"content": b"[" + b"0," * 150_000 + b"0]", "headers": json_h}, 413, "too_large"),
        ("/predict", {"json": {"paths": [str(root / "face.png") + "\0.png"]}}, 400, "bad_request"),
        ("/predict", {"json": {"paths": str(root / "face.png")}}, 400, "bad_request"),
        ("/predict", {"json": {"paths": [str(root / "face.png")] * 4}}, 413, "too_large"),
        ("/predict", {"json": {"paths": [str(root / "face.png")], "aggregate": ["x"]}}, 400, "bad_request"),
        ("/predict", {"files": {"file": ("bomb.png", bomb)}}, 413, "too_large"),
        ("/predict", {"files": {"file": ("a.gif", (tmp_path / "a.gif").read_bytes())}}, 415, "unsupported"),
        ("/predict", {"files": {"other": ("f.png", media["face"].read_bytes())}}, 400, "bad_request"),
        ("/predict", {"files": {"note": (None, "a field, no file")}}, 400, "empty"),
        ("/predict", {"data": {"aggregate": "mean"}}, 415, "unsupported"),  # urlencoded, no file
        ("/predict", {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=x"}},
         400, None),
        ("/predict", {"content": b"raw bytes", "headers": {"content-type": "application/octet-stream"}}, 415,
         "unsupported"),
        ("/predict", {"files": {"file": ("big.mp4", b"\0" * 1_000_001)}}, 413, "too_large"),
        # serve.max_crops (64) and serve.max_crop_side (1024): 413 before any scoring
        ("/invocations", {"json": {"inputs": [[[[0, 0, 0]]]] * 65}}, 413, "too_large"),
        ("/invocations", {"json": {"inputs": [[[[0, 0, 0]] * 1025]]}}, 413, "too_large"),
        # a path list past serve.max_path_json_bytes (1.1 MB), refused while streaming, before max_paths is counted
        ("/predict", {"json": {"paths": ["/x" * 2000] * 300}}, 413, "too_large"),
        # part headers: at most 8 lines of at most 1024 bytes (python-multipart's per-part limits)
        ("/predict", {"content": b"--x\r\n" + b"X-A: b\r\n" * 9 + b"Content-Disposition: form-data; name=\"file\"; "
                      b"filename=\"f.png\"\r\n\r\nabc\r\n--x--\r\n",
                      "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "bad_request"),
        ("/predict", {"content": b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
                      + b"a" * 2000 + b".png\"\r\n\r\nabc\r\n--x--\r\n",
                      "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "bad_request"),
    ]
    for path, kw, status, reason in cases:
        resp = _post(url, path, **kw)
        body = resp.json()
        assert resp.status_code == status, (path, str(kw)[:120], resp.text[:300])
        assert set(body) >= {"error", "reason", "detail"} and (reason is None or body["reason"] == reason), body
    good = _post(url, "/predict", files={"file": ("face.png", media["face"].read_bytes())})
    assert good.status_code == 200 and good.json()["p_fake"] is not None


def test_timed_out_requests_stop_scoring(registered, loaded, media: dict[str, Path], monkeypatch) -> None:
    """Four requests time out; scorings never exceed max_concurrent and each stops within a frame of its 504."""
    import dfd.data.face_extract as face_extract

    real_detect = face_extract.detect_chain

    # Seconds a frame: the real detector, made slow enough to time out. The timeout also bounds receiving the upload
    # (408), so it stays well above what four concurrent 100 KB uploads take on a busy 2-core machine (0.3 s did not).
    slow = 3.0

    def slow_detect(chain, images, max_side):  # counts frames: a cancellable scoring detects one frame a call
        with lock:
            calls[threading.get_ident()] = calls.get(threading.get_ident(), 0) + len(images)
        time.sleep(slow * len(images))
        return real_detect(chain, images, max_side)

    monkeypatch.setattr(face_extract, "detect_chain", slow_detect)
    scorer = loaded.python_model.scorer
    real_score = scorer.score_upload
    lock, state, spans, calls = threading.Lock(), {"running": 0, "peak": 0}, [], {}

    def counted(*args, **kwargs):  # counts scorings where they run: in the worker thread, until they return
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        t0 = time.monotonic()
        with lock:
            calls[threading.get_ident()] = 0
        try:
            return real_score(*args, **kwargs)
        finally:
            with lock:
                state["running"] -= 1
                spans.append((time.monotonic() - t0, calls[threading.get_ident()]))

    monkeypatch.setattr(scorer, "score_upload", counted)
    frames = scorer.faces_cfg["frames_per_video"]
    assert frames >= 2  # uncancelled, a scoring takes >= 6 s: four times the timeout
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(max_concurrent=2, request_timeout_s=1.5, poll_interval_s=0, isolation="thread")
    data = media["fake"].read_bytes()
    with _Server(create_app(holder, cfg)) as url:
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(httpx.post(
            f"{url}/predict", files={"file": ("clip.mp4", data)}, timeout=60).status_code)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        deadline = time.monotonic() + 10
        while state["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert codes == [504] * 4
    assert state["peak"] <= 2 and state["running"] == 0 and len(spans) == 4
    # Each stopped at the first check after its timeout (the detector's first load in a worker thread can outlast
    # the timeout, so that is 0 or 1 frames detected), never all `frames`: (seconds, frames detected) per scoring.
    assert all(n < frames for _, n in spans), spans
