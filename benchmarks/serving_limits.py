"""`dfd serve` under hostile input: what a refused upload costs the server, upload throughput, a PNG bomb, bad inputs.

The model: the random full-size ensemble of `benchmarks/serving.py` (speed and memory do not depend on the weights),
with faces params sampling 2 frames per video so that the upload, not the scoring, dominates. `dfd serve` runs as a
real process on loopback; its /proc/PID/io is read around each request, and the memory of its whole process tree
(server, forkserver, scoring workers: the PSS summed, sampled every 0.1 s, benchmarks/tree_memory.py) during it.

    python benchmarks/serving_limits.py [--limit-mb 64] [--video-mb 60] [--out FILE.json]

Prints: the bytes the server wrote (wchar, write_bytes) and its resident memory growth while refusing a chunked
upload of 3x `serve.max_upload_bytes`, and the tree's peak memory then; MB/s of an accepted video upload of
`--video-mb`; the tree's peak memory and time on a 20000x20000 PNG; and the status code of every bad input tried.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import _port, bench_image, register_random, start  # the same registered random ensemble
from tree_memory import TreeMemory

from dfd.data.face_extract import face_crops
from dfd.data.media import read_rgb
from dfd.platform.config import Params

TOKEN = "bench-token-0123456789abcdef"  # a throwaway token for this process only


def proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io counters (wchar: bytes passed to write calls; write_bytes: bytes sent to the storage layer)."""
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A grey side x side PNG of a few hundred KB (all zero rows compress ~1000:1), written without the pixels."""
    if path.exists():
        return path

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    comp, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))
    return path


def big_video(path: Path, megabytes: int) -> Path:
    """A noise video (incompressible, so large) of about `megabytes`, 640x480 mp4v (cached between runs)."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(8)]

    def write(target: Path, n: int) -> int:
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
        for j in range(n):
            writer.write(frames[j % len(frames)] ^ np.uint8(j % 256))
        writer.release()
        return target.stat().st_size

    per_frame = write(path.with_suffix(".probe.mp4"), 50) / 50  # size per frame, measured on a short probe
    write(path, int(megabytes * 1e6 / per_frame) + 1)
    return path


def chunked(total: int, piece: int = 1 << 20):
    """A body of `total` bytes sent with Transfer-Encoding: chunked (no Content-Length)."""
    boundary = "bench"
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
           "Content-Type: video/mp4\r\n\r\n").encode()
    sent = 0
    block = b"\0" * piece
    while sent < total:
        yield block
        sent += piece
    yield f"\r\n--{boundary}--\r\n".encode()


def bad_inputs(url: str, headers: dict[str, str], bomb: Path, media: dict[str, bytes]) -> list[tuple[str, int]]:
    """Each hostile request and the status it got; the server must answer /health after each."""
    crop = np.zeros((1, 8, 8, 3), np.uint8).tolist()
    cases: list[tuple[str, dict]] = [
        ("invocations pixel 300", {"json": {"inputs": [[[[300, 0, 0]] * 8] * 8]}}),
        ("invocations pixel -1", {"json": {"inputs": [[[[-1, 0, 0]] * 8] * 8]}}),
        ("invocations float pixels", {"json": {"inputs": [[[[0.5, 0, 0]] * 8] * 8]}}),
        ("invocations strings", {"json": {"inputs": [[[["a", "b", "c"]] * 8] * 8]}}),
        ("invocations ragged", {"json": {"inputs": [[[[1, 2, 3]], [[1, 2]]]]}}),
        ("invocations null", {"json": {"inputs": None}}),
        ("invocations list body", {"json": [crop]}),
        ("invocations huge int", {"json": {"inputs": [[[[10 ** 30, 0, 0]]]]}}),
        ("invocations 1x0x0x3", {"json": {"inputs": [[[]]]}}),
        ("invocations deep nesting", {"content": "[" * 100000 + "]" * 100000,
                                      "headers": {"content-type": "application/json"}}),
        ("invocations not JSON", {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}),
        ("invocations 60 MB JSON", {"content": b"[" + b"0," * 30_000_000 + b"0]",
                                    "headers": {"content-type": "application/json"}}),
        ("predict paths NUL byte", {"json": {"paths": ["/tmp/a\0b.png"]}}),
        ("predict paths not a list", {"json": {"paths": "/etc/passwd"}}),
        ("predict paths 10000", {"json": {"paths": ["/tmp/x.png"] * 10000}}),
        ("predict JSON array body", {"json": [1, 2]}),
        ("predict 20000x20000 PNG", {"files": {"file": ("bomb.png", bomb.read_bytes())}}),
        ("predict text file", {"files": {"file": ("notes.txt", b"not a picture\n")}}),
        ("predict empty file", {"files": {"file": ("e.png", b"")}}),
        ("predict truncated video", {"files": {"file": ("cut.mp4", media["truncated"])}}),
        ("predict GIF", {"files": {"file": ("a.gif", media["gif"])}}),
        ("predict unknown aggregate", {"files": {"file": ("f.png", media["face"])}, "params": {"aggregate": "x"}}),
        ("predict no file field", {"files": {"other": ("f.png", media["face"])}}),
        ("predict garbage multipart", {"content": b"--x\r\nnonsense", "headers": {
            "content-type": "multipart/form-data; boundary=x"}}),
    ]
    out = []
    for name, kw in cases:
        path = "/invocations" if name.startswith("invocations") else "/predict"
        kw = {**kw, "headers": {**headers, **kw.get("headers", {})}}
        try:
            status = httpx.post(f"{url}{path}", timeout=120, **kw).status_code
        except httpx.HTTPError as exc:
            status = f"client error {type(exc).__name__}"
        alive = httpx.get(f"{url}/health", timeout=30).status_code
        out.append((name, status, alive))
        print(f"  {name:<30} {status}   (health after: {alive})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit-mb", type=int, default=64)
    ap.add_argument("--video-mb", type=int, default=60)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dfd-bench-limits")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.cache.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dfd-bench-limits-"))
    results: dict = {}
    proc = None
    try:
        image = bench_image(None, work)
        faces_cfg = {**Params().faces.model_dump(), "frames_per_video": 2}
        crop = face_crops([(0, read_rgb(image))], faces_cfg)[0]["crop"]
        tracking, model = register_random(work, crop, faces_cfg)
        limit = args.limit_mb * 1_000_000
        (work / "params.yaml").write_text(yaml.safe_dump({"serve": {
            "max_upload_bytes": limit, "request_timeout_s": 600, "path_roots": [str(work)]}}))
        bindir = Path(sys.executable).parent
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(Path(__file__).parent.parent),
               "DFD_SERVE_TOKEN": TOKEN}
        port = _port()
        url = f"http://127.0.0.1:{port}"
        proc = start([str(bindir / "dfd"), "--params", str(work / "params.yaml"), "serve", "--model", model,
                      "--port", str(port)], env, f"{url}/health", work / "serve.log")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        face = image.read_bytes()
        httpx.post(f"{url}/predict", files={"file": ("f.jpg", face)}, headers=headers, timeout=300)  # warm-up

        # 1. A chunked upload of 3x the limit: what the server wrote and held while refusing it.
        with TreeMemory(proc.pid, 0.1) as idle:  # the tree at rest, after the warm-up
            time.sleep(1)
        io0, mem0 = proc_io(proc.pid), proc_mem(proc.pid)
        t = time.perf_counter()
        with TreeMemory(proc.pid, 0.1) as tree:
            try:
                r = httpx.post(f"{url}/predict", content=chunked(3 * limit), timeout=300,
                               headers={**headers, "content-type": "multipart/form-data; boundary=bench"})
                status = r.status_code
            except httpx.HTTPError as exc:
                status = f"client error {type(exc).__name__}"
        io1, mem1 = proc_io(proc.pid), proc_mem(proc.pid)
        results["refused_3x"] = {"status": status, "seconds": round(time.perf_counter() - t, 2),
                                 "limit_bytes": limit, "sent_bytes": 3 * limit,
                                 "wchar": io1["wchar"] - io0["wchar"],
                                 "write_bytes": io1["write_bytes"] - io0["write_bytes"],
                                 "rss_growth_kib": mem1["VmRSS"] - mem0["VmRSS"],
                                 "peak_growth_kib": mem1["VmHWM"] - mem0["VmHWM"],
                                 "tree_pss_idle_mib": round(idle.peak.pss_mib),
                                 "tree_pss_peak_mib": round(tree.peak.pss_mib), "tree_processes": tree.peak.processes}
        print("3x chunked upload:", results["refused_3x"], flush=True)

        # 2. Throughput of a large accepted video.
        video = big_video(args.cache / f"noise_{args.video_mb}mb.mp4", args.video_mb)
        data = video.read_bytes()
        io0 = proc_io(proc.pid)
        t = time.perf_counter()
        r = httpx.post(f"{url}/predict", files={"file": ("big.mp4", data)}, headers=headers, timeout=600)
        dt = time.perf_counter() - t
        io1 = proc_io(proc.pid)
        results["video"] = {"status": r.status_code, "bytes": len(data), "seconds": round(dt, 2),
                            "mb_per_s": round(len(data) / 1e6 / dt, 1), "reason": r.json().get("reason"),
                            "wchar": io1["wchar"] - io0["wchar"]}
        print("large video:", results["video"], flush=True)

        # 3. The 20000x20000 PNG.
        bomb = png_bomb(args.cache / "bomb_20000.png")
        t = time.perf_counter()
        with TreeMemory(proc.pid, 0.1) as tree:  # the checks run in a scoring worker, not the server process
            r = httpx.post(f"{url}/predict", files={"file": ("bomb.png", bomb.read_bytes())}, headers=headers,
                           timeout=600)
        results["png_bomb"] = {"status": r.status_code, "png_bytes": bomb.stat().st_size,
                               "seconds": round(time.perf_counter() - t, 2), "reason": r.json().get("reason"),
                               "tree_pss_idle_mib": round(idle.peak.pss_mib),
                               "tree_pss_peak_mib": round(tree.peak.pss_mib),
                               "tree_hwm_sum_mib": round(tree.peak.hwm_mib)}
        print("PNG bomb:", results["png_bomb"], flush=True)

        # 4. Bad inputs.
        raw = video.read_bytes()[:2_000_000]
        gif = work / "a.gif"
        from PIL import Image

        Image.new("RGB", (32, 32)).save(gif)
        print("bad inputs (status, health after):")
        results["bad_inputs"] = bad_inputs(url, headers, bomb, {"truncated": raw, "face": face,
                                                                "gif": gif.read_bytes()})
        results["serve_log_tail"] = (work / "serve.log").read_text()[-1500:]
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
