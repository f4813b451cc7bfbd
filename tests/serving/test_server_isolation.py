"""`dfd serve` against clients that hold a key: scoring in worker processes that are killed at the timeout, the
process started from the CLI with its tokens, what a streamed refusal costs the server, and the gate's rules.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from dfd.platform.config import ServeParams
from dfd.serving.server import ModelHolder, create_app
from tests.helpers import PROJECT, TINY, wait_until_up
from tests.serving.test_server import _free_port, _Server

TOKEN_A, TOKEN_B = "rotate-old-" + "a" * 24, "rotate-new-" + "b" * 24


def _proc_field(pid: int, name: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/{name}")


def test_hostile_requests_cost_a_restart_not_the_server(registered, loaded, media: dict[str, Path]) -> None:
    """Two requests that would hold a slot for minutes (20,000 1x1 crops: 300 KB of JSON) are killed at the
    timeout with their worker; a normal request is then answered by the replacement; workers run under RLIMIT_AS."""
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(max_concurrent=1, request_timeout_s=15, slot_wait_s=300, max_crops=20_000, poll_interval_s=0,
                      worker_memory_bytes=12 * 2**30)
    hostile = json.dumps({"inputs": [[[[0, 0, 0]]]] * 20_000})
    app = create_app(holder, cfg)
    t0 = time.monotonic()
    with _Server(app, start_timeout_s=600) as url:
        started_s = time.monotonic() - t0
        pool = app.state.pool
        (first,) = [w.proc.pid for w in pool._all]
        limits = Path(f"/proc/{first}/limits").read_text()
        assert f"{12 * 2**30}" in next(line for line in limits.splitlines() if line.startswith("Max address space"))
        timings, codes = [], []
        for _ in range(2):
            t0 = time.monotonic()
            r = httpx.post(f"{url}/invocations", content=hostile, timeout=300,
                           headers={"content-type": "application/json"})
            timings.append(round(time.monotonic() - t0, 1))
            codes.append((r.status_code, r.json()["reason"]))
        t0 = time.monotonic()
        ok = httpx.post(f"{url}/predict", files={"file": ("face.png", media["face"].read_bytes())}, timeout=300)
        timings.append(round(time.monotonic() - t0, 1))
        vm_peak = _proc_field(next(iter(pool._all)).proc.pid, "status", "VmPeak:")
        loads = [round(s, 1) for s in pool.load_seconds]
        print(f"server start {started_s:.1f} s; hostile, hostile, normal: {timings} s; worker loads {loads} s; "
              f"worker VmPeak {vm_peak / 2**20:.1f} GiB")
    assert codes == [(504, "timeout"), (504, "timeout")], codes
    assert ok.status_code == 200 and ok.json()["p_fake"] == pytest.approx(
        loaded.python_model.scorer.score_path(media["face"]).p_fake, abs=1e-6)
    assert pool.restarts == 2 and len(pool.load_seconds) == 3
    assert not Path(f"/proc/{first}").exists() or "Z" in Path(f"/proc/{first}/stat").read_text().split()[2]
    # and the default limits refuse that body before any scoring: 413
    assert ServeParams().max_crops < 20_000


def _serve_process(tmp_path: Path, registered, env_extra: dict[str, str], serve: dict) -> tuple[subprocess.Popen, str]:
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"data": {"root": str(tmp_path)}, "monitor": {"log_dir": None},
                                        "serve": {"poll_interval_s": 0, **serve}}))
    env = {k: v for k, v in os.environ.items() if k not in ("DFD_SERVE_TOKEN", "DFD_SERVE_TOKENS")}
    env.update(MLFLOW_TRACKING_URI=registered.tracking_uri, DFD_PARAMS_OVERRIDE=f"{TINY}{os.pathsep}{override}",
               **env_extra)
    port = _free_port()
    dfd = Path(sys.executable).parent / "dfd"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(dfd), "--params", str(PROJECT / "params.yaml"), "serve", "--model", registered.uri,
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health", proc, 300, "dfd serve")
    return proc, url


CHUNKED = r"""
import sys, httpx
url, total, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def body():
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'
    for _ in range(total // 65536):
        yield b"\0" * 65536
    yield b"\r\n--b--\r\n"
try:
    r = httpx.post(url, content=body(), timeout=120,
                   headers={"content-type": "multipart/form-data; boundary=b", "authorization": "Bearer " + token})
    print(r.status_code, r.json()["reason"])
except httpx.HTTPError as exc:
    print("client-error", type(exc).__name__)
"""


def test_dfd_serve_process_tokens_and_streaming_cost(registered, media: dict[str, Path], tmp_path: Path) -> None:
    """`dfd serve` from the CLI with $DFD_SERVE_TOKEN and $DFD_SERVE_TOKENS: 401 without, 200 with either token;
    a 30 MB chunked upload over a 1 MB limit is refused having read little more than the limit, and without
    raising the server's peak memory by the body's size."""
    limit = 1_000_000
    proc, url = _serve_process(tmp_path, registered, {"DFD_SERVE_TOKEN": TOKEN_A, "DFD_SERVE_TOKENS": TOKEN_B},
                               {"isolation": "thread", "max_upload_bytes": limit})
    try:
        assert httpx.get(f"{url}/version", timeout=30).status_code == 401
        assert httpx.get(f"{url}/version", headers={"Authorization": "Bearer wrong-" + "x" * 20},
                         timeout=30).status_code == 401
        for token in (TOKEN_A, TOKEN_B):
            r = httpx.get(f"{url}/version", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert r.status_code == 200 and r.json()["version"] == registered.version
        read0, hwm0 = _proc_field(proc.pid, "io", "rchar:"), _proc_field(proc.pid, "status", "VmHWM:")
        out = subprocess.run([sys.executable, "-c", CHUNKED, f"{url}/predict", str(30 * limit), TOKEN_B],
                             capture_output=True, text=True, timeout=300)
        read = _proc_field(proc.pid, "io", "rchar:") - read0
        grown_kb = _proc_field(proc.pid, "status", "VmHWM:") - hwm0
        assert out.stdout.split() == ["413", "too_large"], out.stdout + out.stderr
        # the limit, the form overhead and uvicorn's read-ahead, never the 30 MB sent
        assert read < 3 * limit, f"the server read {read} bytes refusing a {30 * limit}-byte upload"
        assert grown_kb * 1024 < 10 * limit, f"peak memory grew {grown_kb} KB"
        read0 = _proc_field(proc.pid, "io", "rchar:")  # without a valid token: 401, and the body is not read
        out = subprocess.run([sys.executable, "-c", CHUNKED, f"{url}/predict", str(30 * limit), "wrong"],
                             capture_output=True, text=True, timeout=300)
        unauth_read = _proc_field(proc.pid, "io", "rchar:") - read0
        print(f"413: read {read} bytes, peak memory +{grown_kb} KB; 401: read {unauth_read} bytes")
        assert out.stdout.split()[:1] in (["401"], ["client-error"]) and unauth_read < limit, (out.stdout, unauth_read)
        ok = httpx.post(f"{url}/predict", files={"file": ("face.png", media["face"].read_bytes())},
                        headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=120)
        assert ok.status_code == 200 and ok.json()["reason"] is None
        assert "GET /version" not in (tmp_path / "serve.log").read_text()  # no access log: no client addresses
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def test_gate_local_only_and_rate_limit(registered, loaded) -> None:
    """No token: loopback Host headers only, proxied requests refused; a rate limit per client."""
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(isolation="thread", poll_interval_s=0, rate_limit_per_minute=5)
    with _Server(create_app(holder, cfg)) as url:
        for headers in ({"Host": "evil.example"}, {"Host": "evil.example:80"}, {"X-Forwarded-For": "10.0.0.1"},
                        {"Forwarded": "for=10.0.0.1"}):
            r = httpx.get(f"{url}/version", headers=headers, timeout=10)
            assert r.status_code == 403 and r.json()["reason"] == "forbidden", headers
            assert "token" in r.json()["error"] or "token" in r.json()["detail"]
        codes = [httpx.get(f"{url}/version", headers={"Host": h}, timeout=10).status_code
                 for h in ("localhost:8000", "127.0.0.1", "[::1]:1")]
        assert codes == [200, 200, 200]
        # 5 a minute: two more pass, then 429 with the seconds until one more may
        codes = [httpx.get(f"{url}/version", timeout=10) for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        assert codes[-1].json()["reason"] == "rate_limited" and int(codes[-1].headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the probe is never limited


def test_gate_closes_websockets_before_the_app() -> None:
    """A websocket scope never reaches the app, token or not; the lifespan does."""
    import asyncio

    from dfd.serving.auth import Gate

    reached, sent = [], []

    async def app(scope, receive, send) -> None:
        reached.append(scope["type"])

    async def send(message) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    for tokens in ([], ["t" * 20]):
        gate = Gate(app, tokens)
        scope = {"type": "websocket", "path": "/health", "headers": [(b"host", b"localhost"),
                                                                      (b"authorization", b"Bearer " + b"t" * 20)]}
        asyncio.run(gate(scope, receive, send))
        asyncio.run(gate({"type": "lifespan"}, receive, send))
    assert reached == ["lifespan", "lifespan"] and sent == [{"type": "websocket.close", "code": 1008}] * 2


def test_drop_folder_swap_and_symlink_between_check_and_open(registered, loaded, media: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """A file swapped for a pixel bomb, or a folder swapped for a symlink out of the roots, after the path check
    and before the open (an explicit pause hook): the bomb is refused from its copy's header, the symlink by the
    open descriptor's real path, and nothing names the outside file."""
    from tests.unit.test_serve_checks import png_bomb

    root, outside = tmp_path / "drop", tmp_path / "private-outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    bomb = png_bomb(tmp_path / "bomb.png", 3000)
    secret = outside / "face.png"
    secret.write_bytes(media["face"].read_bytes())
    target = root / "in" / "face.png"
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(isolation="thread", poll_interval_s=0, path_roots=[str(root)], max_image_pixels=4_000_000)
    swaps = {"mode": None}

    def pause(path: Path) -> None:
        if swaps["mode"] == "bomb":
            os.replace(bomb, path)
        elif swaps["mode"] == "symlink":
            (root / "in").rename(root / "old")
            (root / "in").symlink_to(outside)

    with _Server(create_app(holder, cfg, before_open=pause)) as url:
        target.write_bytes(media["face"].read_bytes())
        assert httpx.post(f"{url}/predict", json={"paths": [str(target)]}, timeout=120).json()["results"][0][
            "reason"] is None
        swaps["mode"] = "bomb"
        r = httpx.post(f"{url}/predict", json={"paths": [str(target)]}, timeout=120)
        assert r.status_code == 200 and r.json()["results"][0]["reason"] == "too_large", r.text
        swaps["mode"] = "symlink"
        r = httpx.post(f"{url}/predict", json={"paths": [str(target)]}, timeout=120)
        assert r.status_code == 403 and r.json()["reason"] == "forbidden", r.text
        assert "private-outside" not in r.text


def test_resolution_switch_mid_stream(loaded, tmp_path: Path) -> None:
    """An H.264 stream whose second SPS switches 64x64 -> 320x240: its header passes max_video_pixels=5000, the
    decoded frames do not; without the limit it scores (or finds no face) as usual."""
    import imageio_ffmpeg

    from dfd.serving.media_scoring import load_frames

    ff = imageio_ffmpeg.get_ffmpeg_exe()
    parts = []
    for size in ("64x64", "320x240"):
        part = tmp_path / f"{size}.h264"
        subprocess.run([ff, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10", "-frames:v", "5",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-bsf:v", "h264_mp4toannexb", str(part)], check=True)
        parts.append(part.read_bytes())
    (tmp_path / "ab.h264").write_bytes(b"".join(parts))
    clip = tmp_path / "switch.mp4"
    subprocess.run([ff, "-v", "error", "-y", "-r", "10", "-i", str(tmp_path / "ab.h264"), "-c", "copy", str(clip)],
                   check=True)
    faces = loaded.python_model.scorer.faces_cfg
    _, res = load_frames(clip, faces, ServeParams(max_video_pixels=5000))
    assert res.reason == "too_large" and "decoded frame" in res.detail, res
    frames, res = load_frames(clip, faces, ServeParams(max_video_pixels=320 * 240))
    assert res.reason is None and frames


def test_jpeg_scans_counted_before_decoding(tmp_path: Path) -> None:
    """A progressive JPEG has one SOS marker per scan; past max_jpeg_scans it is refused unread by any decoder."""
    import numpy as np
    from PIL import Image

    from dfd.serving.media_checks import Refusal, check_image, jpeg_scans

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    img.save(tmp_path / "base.jpg", quality=90)
    img.save(tmp_path / "prog.jpg", quality=90, progressive=True)
    assert jpeg_scans(tmp_path / "base.jpg", 100) == 1 and jpeg_scans(tmp_path / "prog.jpg", 100) > 3
    assert check_image(tmp_path / "prog.jpg", ServeParams()) == (64, 64)
    with pytest.raises(Refusal) as refused:
        check_image(tmp_path / "prog.jpg", ServeParams(max_jpeg_scans=3))
    assert refused.value.reason == "too_large" and "max_jpeg_scans" in refused.value.detail


def test_busy_slots_503_and_slow_json_408(registered, loaded, media: dict[str, Path], monkeypatch) -> None:
    """A request that finds the one slot busy past slot_wait_s gets 503 with Retry-After; a JSON body that stops
    arriving gets 408 at the timeout, as an upload does."""
    import socket
    import threading

    scorer = loaded.python_model.scorer
    real_score, started, release = scorer.score_upload, threading.Event(), threading.Event()

    def held(*args, **kwargs):
        started.set()
        release.wait(30)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(scorer, "score_upload", held)
    holder = ModelHolder(registered.uri, registered.tracking_uri, loader=lambda u, t: loaded)
    cfg = ServeParams(isolation="thread", poll_interval_s=0, max_concurrent=1, slot_wait_s=0.5, request_timeout_s=2)
    data = media["face"].read_bytes()
    with _Server(create_app(holder, cfg)) as url:
        first: dict[str, int] = {}
        t = threading.Thread(target=lambda: first.update(code=httpx.post(
            f"{url}/predict", files={"file": ("f.png", data)}, timeout=60).status_code))
        t.start()
        assert started.wait(30)
        busy = httpx.post(f"{url}/predict", files={"file": ("f.png", data)}, timeout=60)
        release.set()
        t.join(60)
        assert busy.status_code == 503 and busy.json()["reason"] == "busy" and busy.headers["retry-after"] == "1"
        assert first["code"] in (200, 504)  # it had the slot: answered or timed out, never refused
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n{\"inputs\": [")  # ...and nothing more
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"


def test_process_workers_follow_the_alias(registered, tmp_path: Path, media: dict[str, Path]) -> None:
    """Process mode: when the alias moves, the worker loads the new version (a step of its own, outside the
    request's timeout) and its answers come from it, by the version they name and by their score; no request of a
    client sending back-to-back fails meanwhile. The new version's post-calibration is shifted, so the two score the
    same face differently and a score shows which version's worker computed it."""
    import shutil
    import threading

    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks import register
    from tests.helpers import tiny_params

    root = tmp_path / "project"
    shutil.copytree(registered.root, root)
    params = tiny_params(root, mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"})
    tracker = Tracker.from_params(params, root)
    holder = ModelHolder(registered.uri, tracker.tracking_uri)
    old = holder.current.version
    face = media["face"]
    expected = {old: holder.current.python_model.scorer.score_path(face).p_fake}
    cfg = ServeParams(max_concurrent=1, poll_interval_s=0.5, request_timeout_s=120, slot_wait_s=600)
    assert cfg.isolation == "process"
    app = create_app(holder, cfg)
    answers: list[tuple[int, str | None, float | None]] = []
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(timeout=900) as c:
            while not stop.is_set():
                r = c.post(f"{url}/predict", files={"file": ("face.png", face.read_bytes())})
                body = r.json()
                answers.append((r.status_code, body.get("model_version"), body.get("p_fake")))

    def wait(what: str, done: Callable[[], bool], timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; answers {answers}"
            time.sleep(0.2)

    with _Server(app, start_timeout_s=600) as url:
        holder.start(0.5)
        sender = threading.Thread(target=client, args=(url,), daemon=True)
        sender.start()
        try:
            wait("a first answer", lambda: len(answers) >= 1)
            spec_path = Layout.from_params(params, root).ensemble_dir / "ensemble.json"
            spec = json.loads(spec_path.read_text())
            post = spec.get("post_calibration") or {"method": "platt", "a": 1.0, "b": 0.0}
            spec["post_calibration"] = {**post, "b": float(post.get("b", 0.0)) + 1.0}  # monotone: same ranking
            spec_path.write_text(json.dumps(spec))
            res = register.run(params, Layout.from_params(params, root), tracker)
            assert res.promoted and res.version != old
            wait("the holder's swap", lambda: holder.current.version == res.version)
            wait("three answers from the new version", lambda: sum(v == res.version for _, v, _ in answers) >= 3)
        finally:
            stop.set()
            sender.join(900)
            holder.stop()
        pool = app.state.pool
        restarts, loads = pool.restarts, list(pool.load_seconds)
    expected[res.version] = holder.current.python_model.scorer.score_path(face).p_fake
    assert abs(expected[res.version] - expected[old]) > 1e-3, expected  # the score tells the versions apart
    assert [s for s, _, _ in answers] == [200] * len(answers), answers
    versions = [v for _, v, _ in answers]
    first_new = versions.index(res.version)
    assert set(versions[:first_new]) == {old} and set(versions[first_new:]) == {res.version}, versions
    for _, version, p_fake in answers:
        assert p_fake == pytest.approx(expected[version], abs=1e-5), (version, p_fake, expected)
    assert restarts == 0 and len(loads) == 2, (restarts, loads)  # the start, and one reload in place
    print(f"process-mode swap: {len(answers)} answers ({first_new} from {old}), reload {loads[1]:.1f} s")
