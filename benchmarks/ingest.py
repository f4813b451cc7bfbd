"""Reruns that cost what changed: ingest and faces on a first run, an unchanged rerun and a 1% larger dataset.

Ingest: a generated tree of `--files` small, distinct JPEGs (`--side` pixels square; `folder` layout). Each run
is a fresh process (`python -c`, as `dfd stage ingest` is), so an unchanged rerun can only be cheap through the
memo on disk (`artifacts/.stages/hashes.sqlite`: md5 and media check by path, size, mtime_ns and inode; the
folder by the stamps of all its files), through what `dfd stage ingest` runs (the flow's stage check). Baseline:
the same unchanged rerun without the memo (every file read and opened again, as before). Faces: the drawn-face demo
dataset (`--faces-samples` images), first extraction vs a rerun with nothing new (a stat per crop) vs the same
rerun decoding every crop (`DFD_VERIFY_CROPS=1`, what every rerun did before).

    python benchmarks/ingest.py [--files 20000] [--side 32] [--faces-samples 400]

Prints, per run, the stage's own time (inside the process) and the process's wall time, and the ratios to the
first run (goal: unchanged <= 5%, 1% added <= 10%). Timings are the machine's of the moment: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

PROJECT = Path(__file__).resolve().parent.parent

# One stage in a fresh interpreter: prints the seconds the stage itself took.
STAGE = """
import sys, time
from pathlib import Path
from dfd.platform.config import load_params
from dfd.platform.layout import Layout
from flows.cli_stages import ingest_cached
from tasks import {stage}
params = load_params(sys.argv[1])
layout = Layout.from_params(params, Path(sys.argv[2]))
start = time.perf_counter()
{call}
print(time.perf_counter() - start)
"""
CALLS = {
    "ingest": "ingest_cached(params, layout)",  # what `dfd stage ingest` runs
    # Without the memo: what ingest cost on every run before it (hasher=None reads and opens every file).
    "ingest_nomemo": "ingest.ingest(params.data, params.ingest, layout.resolve(params.data.root), layout.manifest, "
                     "layout.ingest_report, params.train.seed)",
    "faces": "faces.run(params, layout)",
}


def write_images(root: Path, start: int, count: int, seed: int, side: int = 32) -> None:
    """`count` distinct side x side JPEGs (random pixels: no two alike), half real, half fake, five per identity."""
    rng = np.random.default_rng([seed, start])
    for i in range(start, start + count):
        label = "real" if i % 2 == 0 else "fake"
        path = root / label / f"id{i // 10:05d}_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def run_stage(stage: str, params_file: Path, work: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(the stage's seconds, the process's wall seconds) of one stage run in a new interpreter."""
    code = STAGE.format(stage=stage.split("_")[0], call=CALLS[stage])
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(params_file), str(work)], cwd=PROJECT, capture_output=True,
                         text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{res.stderr[-2000:]}")
    return float(res.stdout.strip().splitlines()[-1]), wall


def params_file(work: Path, root: Path, name: str) -> Path:
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": name, "root": str(root)},
                                    "ingest": {"max_bad_share": 0.01},
                                    "faces": {"frames_per_video": 4, "crop_size": 96, "workers": 2}}))
    return path


def table(title: str, rows: list[tuple[str, float, float]]) -> None:
    first_stage, first_wall = rows[0][1], rows[0][2]
    print(f"\n{title}\n{'run':<44}{'stage s':>9}{'ratio':>8}{'process s':>11}{'ratio':>8}")
    for name, stage, wall in rows:
        print(f"{name:<44}{stage:>9.2f}{stage / first_stage:>8.1%}{wall:>11.2f}{wall / first_wall:>8.1%}")


def bench_ingest(work: Path, files: int, side: int) -> list[tuple[str, float, float]]:
    root = work / "raw"
    write_images(root, 0, files, seed=0, side=side)
    pf = params_file(work, root, "bench")
    rows = [("first ingest", *run_stage("ingest", pf, work))]
    rows.append(("unchanged re-ingest (memo)", *run_stage("ingest", pf, work)))
    rows.append(("unchanged re-ingest, no memo (before)", *run_stage("ingest_nomemo", pf, work)))
    write_images(root, files, files // 100, seed=1, side=side)  # 1% more files
    rows.append((f"re-ingest with 1% added ({files // 100} files)", *run_stage("ingest", pf, work)))
    report = json.loads((work / "data" / "manifests" / "ingest_report.json").read_text())
    assert report["samples"] == files + files // 100, report["samples"]
    return rows


def bench_faces(work: Path, samples: int) -> list[tuple[str, float, float]]:
    from dfd.data.demo_data import generate

    root = work / "faces_raw"
    generate(root, seed=0, identities=max(2, samples // 8), images_per_identity=4, videos=0, image_size=128)
    pf = params_file(work, root, "facesbench")
    run_stage("ingest", pf, work)
    rows = [("first extraction", *run_stage("faces", pf, work))]
    rows.append(("rerun, nothing new (stat per crop)", *run_stage("faces", pf, work)))
    rows.append(("rerun, every crop decoded (before)", *run_stage("faces", pf, work, {"DFD_VERIFY_CROPS": "1"})))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--side", type=int, default=32, help="image side in pixels (32: ~1 KB files)")
    parser.add_argument("--faces-samples", type=int, default=400)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dfd-bench-ingest-"))
    try:
        table(f"ingest, {args.files} files ({args.side}x{args.side} JPEG)", bench_ingest(work, args.files, args.side))
        table(f"faces, {args.faces_samples} images", bench_faces(work, args.faces_samples))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
