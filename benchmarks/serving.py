"""Serving speed: `dfd serve` against `mlflow models serve`, the same model, on loopback, side by side.

The model: the default params' four members at their real input sizes (randomly initialised: speed does not depend
on the weights), logged and registered in a temporary sqlite store exactly as the register stage logs the ensemble.
Both servers run as real processes: `dfd serve` with its defaults (`serve.max_concurrent` = 2 scoring worker
processes, one model copy each), `mlflow models serve` with one worker (`-w 1`). Requests: the same image, with 1
and then 8 concurrent clients.
`dfd serve` gets the image itself (POST /predict, multipart: decode, detect, crop, score); `mlflow models serve`
can only take crops, so its client sends the face crop of that image as MLflow scoring JSON (POST /invocations):
the baseline does less work per request (no decode, no detection) but moves a 320x320x3 JSON tensor.

    python benchmarks/serving.py [--image FILE] [--requests 24]

Prints requests/s, p50/p95 latency for each server and concurrency, each server's peak memory (the PSS of its whole
process tree, server, forkserver and scoring workers included, sampled during the run: benchmarks/tree_memory.py),
and the ratios.

    python benchmarks/serving.py --engines [--requests 8]

`dfd serve` per inference engine (`--engine`/`--precision`: torch fp32 and bf16, ONNX Runtime fp32 and int8) and
`mlflow models serve` of the same version (one MLflow model: its logged engine, ONNX Runtime fp32, then torch fp32
and ONNX Runtime int8 through MLflow's `MLFLOW_PYFUNC_INFERENCE_CONFIG` override), one client: req/s, p50/p95,
the process tree's peak memory (PSS), each server's ratio to its own torch fp32, with the CPU's model and flags
(benchmarks/engines.py). Random weights: `serve.max_precision_error` is raised to 1 for `dfd serve`'s int8 row,
whose agreement only a trained model can show (the gate row; benchmarks/int8_agreement.py).

    python benchmarks/serving.py --log-overhead [--rounds 3]

The cost of the served-traffic records (`monitor.log_dir`): `dfd serve` without and with the traffic log, in
alternating rounds (so that a neighbour's load hits both alike), and the record hook's own time per call (crop
statistics and the queue put, what a request pays) on the image's face crop and on a 32-frame video's crops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

from dfd.data.face_extract import face_crops
from dfd.data.media import read_rgb, sample_video_frames
from dfd.platform.config import Params
from dfd.platform.tracking import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import random_ensemble  # the same random full-size members
from tree_memory import TreeMemory

PROJECT = Path(__file__).resolve().parent.parent
MODEL_CODE = PROJECT / "dfd" / "serving" / "pyfunc_model.py"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_image(path: Path | None, work: Path) -> Path:
    """The image to upload: the one given, else the first FF++ clip's first frame, else a demo face."""
    if path:
        return path
    clips = sorted((PROJECT.parent / "shared" / "data" / "ffpp_c23_sample").rglob("*.mp4"))
    out = work / "face.jpg"
    if clips:
        frames, _ = sample_video_frames(clips[0], 1)
        rgb = frames[0][1]
        cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return out
    from dfd.data.demo_data import Pose, draw_face, make_identity

    img = draw_face(make_identity(np.random.default_rng(0), "a"), Pose(), 256, 0)
    cv2.imwrite(str(out), img)
    return out


def register_random(work: Path, crop: np.ndarray, faces_cfg: dict, onnx: bool = False,
                    members: list[str] | None = None) -> tuple[str, str]:
    """Log and register the random ensemble as the register stage does; returns (tracking URI, model URI).

    `onnx`: with fp32 and int8 (QDQ) ONNX members, and ONNX Runtime fp32 as the version's logged engine.
    """
    from tasks.register import _requirements

    params = Params()
    if members:
        params = params.model_copy(update={"models": {m: params.models[m] for m in members}})
    predictor_dir = work / "ckpt"
    predictor_dir.mkdir()
    predictor, spec, _ = random_ensemble(params, predictor_dir)
    (work / "ensemble.json").write_text(json.dumps(spec))
    (work / "faces_report.json").write_text(json.dumps({"params": faces_cfg}))
    artifacts = {"ensemble": str(work / "ensemble.json"), "faces": str(work / "faces_report.json"),
                 **{f"member_{m}": str(predictor_dir / f"{m}.pt") for m in spec["members"]}}
    config = {"engine": "torch", "precision": "fp32"}
    if onnx:
        from engines import export_all

        files = export_all(predictor, predictor_dir, np.stack([crop] * 8), ("QDQ",))
        artifacts.update({f"onnx_fp32_{m}": str(f) for m, f in files["fp32"].items()})
        artifacts.update({f"onnx_int8_{m}": str(f) for m, f in files["int8-QDQ"].items()})
        config = {"engine": "onnxruntime", "precision": "fp32"}
    uri = f"sqlite:///{work / 'mlflow.db'}"
    tracker = Tracker(uri, "bench", work / "mlruns")
    with tracker.run("bench") as rid:
        version = tracker.log_pyfunc_model(
            rid, MODEL_CODE, artifacts, crop[None], _requirements(), [str(PROJECT / "models"), str(PROJECT / "dfd")],
            "bench-ensemble", config)
    tracker.set_alias("bench-ensemble", "production", version)
    return uri, "models:/bench-ensemble@production"


def start(cmd: list[str], env: dict, url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    # dfd serve loads the model in the server, then in each scoring worker: minutes on a loaded machine
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{cmd} did not start")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server; kill it when a loaded machine keeps it from shutting down within two minutes."""
    proc.terminate()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(send, n: int, clients: int) -> tuple[float, float, float]:
    """(requests/s, p50 s, p95 s) for n requests from `clients` threads."""
    lat = []

    def one(_: int) -> None:
        t = time.perf_counter()
        r = send()
        r.raise_for_status()
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return n / wall, float(np.percentile(lat, 50)), float(np.percentile(lat, 95))


def hook_cost_ms(crop: np.ndarray, crops: int, calls: int = 50) -> float:
    """Mean time of `TrafficLog.record` for a result with `crops` face crops (writer not started: queue put only)."""
    from dfd.monitoring.store import LocalStore
    from dfd.monitoring.traffic import TrafficLog
    from dfd.platform.config import MonitorParams
    from dfd.serving.media_scoring import MediaResult

    traffic = TrafficLog(LocalStore(Path(tempfile.gettempdir()) / "unused"), MonitorParams(queue_size=calls + 1))
    res = MediaResult("x", p_fake=0.5, label="real", frames=crops, faces=crops,
                      crops=[{"frame": i, "crop": crop} for i in range(crops)])
    t = time.perf_counter()
    for _ in range(calls):
        traffic.record(res, "1")
    return (time.perf_counter() - t) / calls * 1000


def log_overhead(args: argparse.Namespace, work: Path, image: Path, crop: np.ndarray, model: str,
                 env: dict) -> None:
    """`dfd serve` without and with the traffic log, alternating; prints req/s of each and the ratio."""
    bindir = Path(sys.executable).parent
    data = image.read_bytes()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for mode in ("off", "on") * args.rounds:
        (work / f"{mode}.yaml").write_text(json.dumps({"monitor": {
            "log_dir": str(work / "traffic") if mode == "on" else None, "flush_interval_s": 1.0}}))
        port = _port()
        url = f"http://127.0.0.1:{port}"
        proc = start([str(bindir / "dfd"), "--params", str(work / f"{mode}.yaml"), "serve", "--model", model,
                      "--port", str(port)], env, f"{url}/health", work / f"dfd-{mode}.log")
        try:
            with httpx.Client(timeout=300) as client:
                def send(c=client, u=url):
                    return c.post(f"{u}/predict", files={"file": (image.name, data)})

                send()  # warm-up
                rates[mode].append(load(send, args.requests, 2)[0])
        finally:
            proc.terminate()  # the log's writer flushes on the way out: give a loaded machine time for it
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    written = sum(1 for _ in (work / "traffic").rglob("*.parquet"))
    off, on = float(np.median(rates["off"])), float(np.median(rates["on"]))
    print(f"image {image.name}, {args.requests} requests x {args.rounds} rounds, 2 clients, default dfd serve workers")
    print(f"dfd serve, no traffic log : {off:6.3f} req/s (rounds {', '.join(f'{r:.3f}' for r in rates['off'])})")
    print(f"dfd serve, traffic log    : {on:6.3f} req/s (rounds {', '.join(f'{r:.3f}' for r in rates['on'])}); "
          f"{written} part file(s) written")
    print(f"overhead                  : {(off / on - 1) * 100:+.1f}% time per request (median of rounds)")
    print(f"record hook per call      : {hook_cost_ms(crop, 1):.2f} ms (1 crop), "
          f"{hook_cost_ms(crop, 32):.2f} ms (32 crops, a video)")


def engine_rows(args: argparse.Namespace, work: Path, image: Path, crop: np.ndarray, model: str, env: dict) -> None:
    """`dfd serve` per engine and `mlflow models serve` (its logged engine), one client each; see the docstring."""
    from engines import cpu_line

    bindir = Path(sys.executable).parent
    data = image.read_bytes()
    body = json.dumps({"inputs": crop[None].tolist()})
    # No traffic log: the default monitor.log_dir is relative, and these servers run in the caller's folder.
    (work / "loose.yaml").write_text(json.dumps({"serve": {"max_precision_error": 1.0}, "monitor": {"log_dir": None}}))
    rows = {f"dfd serve {e} {p}": ["--engine", e, "--precision", p]
            for e, p in (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))}
    # MLflow's server: the version's logged engine (ONNX Runtime fp32), and the other two through MLflow's own
    # override of the logged model_config (what a user of `mlflow models serve` would set).
    rows["mlflow models serve onnxruntime fp32"] = {}
    rows["mlflow models serve torch fp32"] = {"engine": "torch", "precision": "fp32"}
    rows["mlflow models serve onnxruntime int8"] = {"engine": "onnxruntime", "precision": "int8"}
    rates = {}
    for name, flags in rows.items():
        port = _port()
        url = f"http://127.0.0.1:{port}"
        if name.startswith("dfd"):
            proc = start([str(bindir / "dfd"), "--params", str(work / "loose.yaml"), "serve", "--model", model,
                          "--port", str(port), *flags], env, f"{url}/health", work / "dfd.log")

            def send(u=url):
                return httpx.post(f"{u}/predict", files={"file": (image.name, data)}, timeout=300)
        else:
            override = {"MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps(flags)} if flags else {}
            proc = start([str(bindir / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
                          "-h", "127.0.0.1", "-p", str(port), "-w", "1"], {**env, **override}, f"{url}/ping",
                         work / "mlflow.log")

            def send(u=url):
                return httpx.post(f"{u}/invocations", content=body, headers={"Content-Type": "application/json"},
                                  timeout=300)
        try:
            with TreeMemory(proc.pid) as mem:
                send()  # warm-up
                rps, p50, p95 = load(send, args.requests, 1)
            rates[name] = rps
            print(f"{name:<37} {rps:6.2f} req/s  p50 {p50 * 1000:7.0f} ms  p95 {p95 * 1000:7.0f} ms  "
                  f"peak PSS {mem.peak.pss_mib:6.0f} MiB ({mem.peak.processes} processes)", flush=True)
        finally:
            stop(proc)
    print(f"image {image.name}, {args.requests} requests, 1 client, default dfd serve workers ({cpu_line()}); mlflow "
          "models serve scores the face crop (no decoding, no detection): the logged engine (onnxruntime fp32), and "
          "torch fp32 / onnxruntime int8 through MLFLOW_PYFUNC_INFERENCE_CONFIG")
    for server in ("dfd serve", "mlflow models serve"):
        base = rates.get(f"{server} torch fp32")
        if base:
            print(f"{server}: " + ", ".join(f"{n.removeprefix(server + ' ')} {r / base:.2f}x" for n, r in rates.items()
                                             if n.startswith(server)) + " (req/s against its torch fp32)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--log-overhead", action="store_true", help="measure the traffic log's cost instead")
    ap.add_argument("--rounds", type=int, default=3, help="--log-overhead: alternating rounds of each")
    ap.add_argument("--engines", action="store_true", help="dfd serve per inference engine, and mlflow models serve")
    ap.add_argument("--members", nargs="+", help="only these of the default members (default: all)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dfd-bench-serve-"))
    try:
        image = bench_image(args.image, work)
        faces_cfg = Params().faces.model_dump()
        found = face_crops([(0, read_rgb(image))], faces_cfg)
        if not found:
            raise SystemExit(f"no face in {image}")
        crop = found[0]["crop"]
        tracking, model = register_random(work, crop, faces_cfg, onnx=args.engines, members=args.members)
        bindir = Path(sys.executable).parent
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(PROJECT),
               "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        if args.log_overhead:
            log_overhead(args, work, image, crop, model, env)
            return
        if args.engines:
            engine_rows(args, work, image, crop, model, env)
            return
        data = image.read_bytes()
        body = json.dumps({"inputs": crop[None].tolist()})
        results = {}
        for name in ("dfd serve", "mlflow models serve"):
            port = _port()
            url = f"http://127.0.0.1:{port}"
            if name == "dfd serve":
                cmd = [str(bindir / "dfd"), "serve", "--model", model, "--port", str(port)]
                proc = start(cmd, env, f"{url}/health", work / "dfd.log")
                client = httpx.Client(timeout=300)

                def send(c=client, u=url):
                    return c.post(f"{u}/predict", files={"file": (image.name, data)})
            else:
                cmd = [str(bindir / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
                       "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
                proc = start(cmd, env, f"{url}/ping", work / "mlflow.log")
                client = httpx.Client(timeout=300)

                def send(c=client, u=url):
                    return c.post(f"{u}/invocations", content=body, headers={"Content-Type": "application/json"})
            try:
                with TreeMemory(proc.pid) as mem:
                    send()  # warm-up
                    for clients in (1, 8):
                        results[(name, clients)] = load(send, args.requests, clients)
                results[(name, "mem")] = mem.peak
            finally:
                client.close()
                stop(proc)
        print(f"image {image.name} ({len(data)} bytes), {args.requests} requests per run, dfd serve: "
              "2 scoring workers (its default), mlflow: -w 1")
        for clients in (1, 8):
            for name in ("dfd serve", "mlflow models serve"):
                rps, p50, p95 = results[(name, clients)]
                print(f"{name:<20} {clients} client(s): {rps:6.2f} req/s  p50 {p50 * 1000:7.0f} ms  "
                      f"p95 {p95 * 1000:7.0f} ms")
            print(f"{'ratio (ours/mlflow)':<20} {clients} client(s): "
                  f"{results[('dfd serve', clients)][0] / results[('mlflow models serve', clients)][0]:.2f}x req/s")
        for name in ("dfd serve", "mlflow models serve"):
            print(f"{name:<20} {results[(name, 'mem')].line()}")
        ours, theirs = results[("dfd serve", "mem")], results[("mlflow models serve", "mem")]
        print(f"{'ratio (ours/mlflow)':<20} {ours.pss_mib / theirs.pss_mib:.2f}x peak PSS")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
