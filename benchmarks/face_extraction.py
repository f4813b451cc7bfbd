"""Face extraction speed: the faces stage against a plain baseline, side by side in one process.

Baseline: for every sampled frame, seek to it (`CAP_PROP_POS_FRAMES`), decode, and run the same detector at full
resolution. Ours: the faces stage (one forward pass with grab/skip, detection on a copy downscaled to
`faces.detect_max_side`, boxes mapped back), with 1 and 2 local worker processes, and on a Dask LocalCluster of
1 and 2 worker processes (`runner.kind: dask`, chunks of samples per task; `--no-dask` skips them). All sample
the same frames and use the same detector (the default `faces.detector`) and crop; all write PNG crops. Detector
families side by side (speed, face share, precision): benchmarks/face_detectors.py.

    python benchmarks/face_extraction.py [--data ../shared/data/ffpp_c23_sample] [--frames 32]

Prints frames per second, the share of sampled frames with a face, and the speed ratios. Timings are the
machine's of the moment: run it on a quiet machine, and compare ratios rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2

from dfd.data.face_detect import create_detector, square_crop
from dfd.data.media import sample_indices
from dfd.platform.config import Params
from dfd.platform.files import read_json
from dfd.platform.layout import Layout
from tasks import faces, ingest

PROJECT = Path(__file__).resolve().parent.parent


def baseline(manifest: list[dict], root: Path, frames: int, out: Path, margin: float, size: int) -> tuple[int, int]:
    """Seek to each sampled frame and detect at full resolution; returns (frames sampled, frames with a face)."""
    p = Params().faces  # the stage's default detector, so that only the method differs
    detector = create_detector(p.detector, p.upsample, confidence=p.mtcnn_confidence,
                               min_face_size=p.mtcnn_min_face_size)
    sampled = found = 0
    for row in manifest:
        cap = cv2.VideoCapture(str(root / row["path"]))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for idx in sample_indices(total, frames):
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, bgr = cap.read()
            if not ok:
                continue
            sampled += 1
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes = detector(rgb)
            if boxes:
                found += 1
                crop, _ = square_crop(rgb, max(boxes, key=lambda b: b.area), margin, size)
                cv2.imwrite(str(out / f"{row['sample_id']}_{idx:05d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        cap.release()
    return sampled, found


def ours(data: Path, frames: int, workers: int, work: Path, dask_address: str | None = None) -> tuple[float, int, int]:
    """The faces stage with `workers` local processes, or on the Dask scheduler at `dask_address`."""
    runner = {"kind": "dask", "address": dask_address} if dask_address else {}
    params = Params.model_validate({"data": {"name": "bench", "adapter": "ffpp", "root": str(data)},
                                    "faces": {"frames_per_video": frames, "workers": workers}, "runner": runner})
    layout = Layout.from_params(params, work)
    ingest.run(params, layout)
    start = time.perf_counter()
    res = faces.run(params, layout)
    elapsed = time.perf_counter() - start
    report = read_json(res.report)
    return elapsed, report["frames_sampled"], report["frames_with_face"]


def dask_rows(data: Path, frames: int, work: Path) -> list[tuple[str, float, int, int]]:
    """The faces stage on a LocalCluster of 1 and 2 single-threaded worker processes, each started before the
    timing (its start-up is printed apart: a cluster serves many runs)."""
    from distributed import LocalCluster

    rows = []
    for n in (1, 2):
        start = time.perf_counter()
        with LocalCluster(n_workers=n, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
            print(f"Dask LocalCluster of {n} worker process(es) up in {time.perf_counter() - start:.1f} s")
            elapsed, sampled, found = ours(data, frames, 1, work / f"dask{n}", cluster.scheduler_address)
        rows.append((f"faces stage on Dask, {n} worker process(es)", elapsed, sampled, found))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared" / "data" / "ffpp_c23_sample")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask rows")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"benchmark data not found: {args.data}")
    work = Path(tempfile.mkdtemp(prefix="dfd-bench-"))
    try:
        rows = []
        for workers in (1, 2):
            elapsed, sampled, found = ours(args.data, args.frames, workers, work / f"ours{workers}")
            rows.append((f"faces stage, {workers} local worker(s)", elapsed, sampled, found))
        if not args.no_dask:
            rows += dask_rows(args.data, args.frames, work)
        manifest = __import__("pandas").read_parquet(work / "ours1" / "data" / "manifests" / "bench.parquet")
        p = Params().faces
        (work / "base").mkdir()
        start = time.perf_counter()
        sampled, found = baseline(manifest.to_dict("records"), args.data, args.frames, work / "base", p.margin,
                                  p.crop_size)
        rows.append(("baseline: seek + full-res detect", time.perf_counter() - start, sampled, found))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'method':<46}{'seconds':>9}{'frames':>8}{'fps':>8}{'face share':>12}")
    for name, elapsed, sampled, found in rows:
        print(f"{name:<46}{elapsed:>9.2f}{sampled:>8}{sampled / elapsed:>8.2f}{found / max(sampled, 1):>12.1%}")
    fps = {name: sampled / elapsed for name, elapsed, sampled, _ in rows}
    base_fps = rows[-1][2] / rows[-1][1]
    one, two = rows[0][2] / rows[0][1], rows[1][2] / rows[1][1]
    print(f"\nspeed-up over baseline: {one / base_fps:.2f}x (1 worker), {two / base_fps:.2f}x (2 workers)")
    print(f"scaling 1 -> 2 local workers: {two / one:.2f}x")
    dask = [v for k, v in fps.items() if k.startswith("faces stage on Dask")]
    if len(dask) == 2:
        print(f"scaling 1 -> 2 Dask worker processes: {dask[1] / dask[0]:.2f}x; Dask (2) vs local pool (2): "
              f"{dask[1] / two:.2f}x")


if __name__ == "__main__":
    main()
