"""`dfd predict` speed against a plain loop, side by side in one process, on the FF++ clips.

Plain loop: for each video, seek to each sampled frame (`CAP_PROP_POS_FRAMES`), detect at full resolution, crop,
and call each member on one crop at a time, as a research script does (`torch.no_grad`, default memory format,
fp32). Ours: what `dfd predict` runs (`dfd.serving.predict.score_files`): one forward pass with grab/skip, detection
on a downscaled copy, reading and face extraction of the next videos in background threads, every crop of a video
scored per member in batches of `CPU_BATCH` in channels-last format. Both sample the same frames, use the same
detector, crop and ensemble, and aggregate with the mean. Then ours again in bf16 (`serve.precision: bf16`), where
the CPU has AVX512-BF16 or AMX, with its largest score difference from fp32.

The ensemble is the default params' four members at their real input sizes (MesoNet 256, Xception 299,
EfficientNet-B4 224, F3Net 299), randomly initialised: the speed does not depend on the weights (but the bf16 score
difference does: measure it on a trained model with `dfd predict --precision bf16`, which checks it when loading).

    python benchmarks/predict.py [--data ../shared/data/ffpp_c23_sample] [--frames 32] [--videos 7] [--tracking-only]

The tracking row: today's served path (every face detected, cropped, scored once, tracked, judged by
`serve.file_rule`, with member scores and timestamps) against the path before tracking (the largest face per frame
only, one predictor call, the mean), one file after another both, on the same (single-face) clips; the budget is
1.15x. `--tracking-only` runs just that row.

Prints videos per second of each and the ratios, and the largest score difference between ours and the plain loop
(the same frames and crops give the same scores up to the resize of the detection boxes).

    python benchmarks/predict.py --engines [--member-crops 16] [--frames 8] [--videos 3]

The inference engines side by side instead (`serve.engine`): each member exported to ONNX (fp32, and int8 by static
quantisation in both QOperator and QDQ format, calibrated on the first video's crops), then (1) member crops/s at
the real input sizes, torch fp32 / bf16 against ONNX Runtime fp32 (batch 1, 4, 8) / int8, with max |dP| from torch
fp32; (2) `dfd predict` end to end, the plain loop, torch fp32/bf16 and ONNX Runtime fp32/int8: videos/s, p50/p95
time per video, the process's peak resident memory during the run, max |score difference| and the share of equal
video labels against torch fp32, and max |d fused logit| (before calibration) and equal labels on the member crops.
Where OpenVINO is installed (`pip install 'dfd[bench]'`), it runs the same ONNX files as comparison rows in both
tables (fp32, and int8 from the QDQ file; it is not a serving engine of dfd). The CPU's model and flags and the
engines' versions are printed beside the numbers. Random weights: the speed holds, the agreement does not (measure it
on a trained model: benchmarks/int8_agreement.py, `dfd export --int8`, the gate row).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from dfd.data.face_detect import create_detector, square_crop
from dfd.data.media import sample_indices
from dfd.platform.config import Params
from dfd.serving.ensemble import EnsemblePredictor
from dfd.serving.media_scoring import MediaScorer
from dfd.serving.predict import score_files
from models.checkpoint import build_from_checkpoint, load_checkpoint
from models.registry import create_model, model_config

PROJECT = Path(__file__).resolve().parent.parent


def random_ensemble(params: Params, work: Path) -> tuple[EnsemblePredictor, dict, dict[str, nn.Module]]:
    """The default members at their real sizes, randomly initialised, equally weighted; and the same weights as plain
    modules for the plain loop."""
    checkpoints = {}
    for name, spec in params.models.items():
        arch = spec.arch or name
        size = model_config(arch, spec.input_size).input_size
        kwargs = {"input_size": size, **spec.kwargs}
        model = create_model(arch, **kwargs)
        path = work / f"{name}.pt"
        torch.save({"arch": arch, "model_kwargs": kwargs, "model_config": model_config(arch, size).to_dict(),
                    "state_dict": model.state_dict()}, path)
        checkpoints[name] = path
    spec = {"members": list(checkpoints), "weights": {m: 1.0 for m in checkpoints}, "val_eer_threshold": 0.5,
            "aggregation": {"method": "mean"}}
    plain = {m: build_from_checkpoint(load_checkpoint(p)).eval() for m, p in checkpoints.items()}
    return EnsemblePredictor.from_spec(spec, checkpoints), spec, plain


def plain_loop(predictor: EnsemblePredictor, plain: dict[str, nn.Module], videos: list[Path],
               cfg: dict) -> list[float | None]:
    detector = create_detector(cfg["detector"], cfg["upsample"])
    out: list[float | None] = []
    for video in videos:
        cap = cv2.VideoCapture(str(video))
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        scores = []
        for idx in sample_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cfg["frames_per_video"]):
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, bgr = cap.read()
            if not ok:
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes = detector(rgb)
            if boxes:
                crop, _ = square_crop(rgb, max(boxes, key=lambda b: b.area), cfg["margin"], cfg["crop_size"])
                member = {}
                with torch.no_grad():
                    for m, model in plain.items():
                        x = predictor.members[m].transform(image=crop)["image"][None]  # the member's own resize
                        member[m] = torch.sigmoid(model(x)).squeeze(1).numpy()
                scores.append(float(predictor.combine(member)[0]))
        cap.release()
        out.append(float(np.mean(scores)) if scores else None)
    return out


def largest_face_only(scorer: MediaScorer, videos: list[Path]) -> list[float | None]:
    """The served path before every face was tracked: the largest face per frame, scored, averaged."""
    from dfd.data.face_extract import face_crops
    from dfd.evaluation.aggregate import aggregate
    from dfd.serving.media_scoring import load_frames

    out: list[float | None] = []
    for video in videos:
        frames, _ = load_frames(video, scorer.faces_cfg, scorer.limits)
        found = face_crops(frames, scorer.faces_cfg)
        scores = scorer.predictor(np.stack([f["crop"] for f in found])) if found else None
        out.append(None if scores is None else aggregate(scores, scorer.aggregation))
    return out


def tracking_row(scorer: MediaScorer, videos: list[Path]) -> None:
    """Print today's tracked path against the largest-face-only path (best of two runs each, interleaved)."""
    runs: dict[str, list[tuple[float, float]]] = {"largest": [], "tracked": []}
    for _ in range(2):
        old, t_old, c_old = timed(lambda: largest_face_only(scorer, videos))
        new, t_new, c_new = timed(lambda: [scorer.score_path(v).p_fake for v in videos])
        runs["largest"].append((c_old, t_old))
        runs["tracked"].append((c_new, t_new))
    # CPU seconds decide (a shared, busy machine distorts them least); wall beside them.
    (c_old, t_old), (c_new, t_new) = min(runs["largest"]), min(runs["tracked"])
    print(f"largest face only  {c_old:6.1f} s CPU  ({t_old:6.1f} s wall)", flush=True)
    print(f"every face tracked {c_new:6.1f} s CPU  ({t_new:6.1f} s wall)  cost {c_new / c_old:.3f}x CPU, "
          f"{t_new / t_old:.3f}x wall (budget 1.15x)", flush=True)
    diff, n = max_diff(old, new)
    print(f"  max |score difference| {diff:.2e} over {n} videos (single-face clips: the same crops, the same scores)")


def timed(fn: Callable[[], list[float | None]]) -> tuple[list[float | None], float, float]:
    """fn's result, wall seconds and this process's CPU seconds (what a shared, busy machine distorts least)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def equal_labels(a: list[float | None], b: list[float | None], threshold: float) -> tuple[float, int]:
    """The share of items both scored whose labels at `threshold` agree, and how many that is."""
    same = [(x >= threshold) == (y >= threshold) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return (float(np.mean(same)) if same else float("nan")), len(same)


def max_diff(a: list[float | None], b: list[float | None]) -> tuple[float, int]:
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return (max(diffs) if diffs else float("nan")), len(diffs)


def engines(args: argparse.Namespace, predictor: EnsemblePredictor, spec: dict, plain: dict[str, nn.Module],
            scorer: MediaScorer, videos: list[Path], cfg: dict, work: Path) -> None:
    """Member crops/s and `dfd predict` per engine, in this process (see the module docstring)."""
    from engines import PeakRSS, cpu_line, export_all, member_table, openvino_available, set_openvino

    found, _ = scorer.prepare_path(videos[0])
    crops = np.stack([f["crop"] for f in found]).astype(np.uint8)
    crops = np.concatenate([crops] * (args.member_crops // len(crops) + 1))[: args.member_crops]
    print(f"exporting {list(predictor.members)} to ONNX (fp32, int8 QOperator and QDQ)")
    files = export_all(predictor, work, crops[:8])
    member_table(predictor, files, crops)

    def run(setup: Callable[[], None] | None) -> tuple[list[float | None], float, list[float], float]:
        if setup is not None:
            setup()
        scorer.score_path(videos[0])  # warm-up
        times, out = [], []
        with PeakRSS() as rss:
            t0 = last = time.perf_counter()
            for r in score_files(scorer, videos, progress=False):
                now = time.perf_counter()
                times.append(now - last)
                last = now
                out.append(r.p_fake)
            wall = time.perf_counter() - t0
        return out, wall, times, rss.peak

    rows = {"torch fp32": lambda: predictor.set_engine("torch", "fp32"),
            "torch bf16": lambda: predictor.set_engine("torch", "bf16"),
            "onnxruntime fp32": lambda: predictor.set_engine("onnxruntime", "fp32", files["fp32"]),
            "onnxruntime int8": lambda: predictor.set_engine("onnxruntime", "int8", files["int8-QDQ"])}
    if openvino_available():
        rows["openvino fp32"] = lambda: set_openvino(predictor, files["fp32"], "fp32")
        rows["openvino int8"] = lambda: set_openvino(predictor, files["int8-QDQ"], "int8")
    else:
        print("openvino is not installed: no OpenVINO rows (pip install 'dfd[bench]')")
    results, logits, crop_p = {}, {}, {}
    predictor.set_engine("torch", "fp32")
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        base = plain_loop(predictor, plain, videos, cfg)
        results["plain loop"] = (base, time.perf_counter() - t0, [], rss.peak)
    for name, setup in rows.items():
        try:
            results[name] = run(setup)
        except (RuntimeError, ValueError) as exc:
            print(f"{name}: not run ({exc})")
            continue
        member = predictor.member_scores(crops)
        fused = np.clip(predictor.fused(member), 1e-12, 1 - 1e-12)
        logits[name] = np.log(fused / (1 - fused))  # the fused logit before calibration, on the member crops
        crop_p[name] = predictor.combine(member)
    predictor.set_engine("torch", "fp32")
    threshold = float(spec.get("threshold", spec.get("val_eer_threshold", 0.5)))
    print(f"dfd predict, {len(videos)} videos x {args.frames} frames ({cpu_line()})")
    print(f"  labels at threshold {threshold}; random weights: the label agreement says little (see the docstring)")
    ref = results["torch fp32"][0]
    t_ref = results["torch fp32"][1]
    for name, (scores, wall, times, peak) in results.items():
        lat = (f"p50 {np.percentile(times, 50):6.2f} s  p95 {np.percentile(times, 95):6.2f} s" if times
               else f"{'(one pass, no pipeline)':<29}")
        diff, n = max_diff(scores, ref)
        same, _ = equal_labels(scores, ref, threshold)
        fused = (f"  crops: max |d fused logit| {np.max(np.abs(logits[name] - logits['torch fp32'])):.1e}, equal "
                 f"labels {np.mean((crop_p[name] >= threshold) == (crop_p['torch fp32'] >= threshold)):.1%} "
                 f"({len(crops)} crops)" if name in logits else "")
        print(f"  {name:<18} {len(videos) / wall:7.3f} videos/s  x{t_ref / wall:5.2f} torch fp32  {lat}  "
              f"peak RSS {peak:7.0f} MiB  videos: max |d score| {diff:.1e}, equal labels {same:.0%} ({n}){fused}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=PROJECT.parent / "shared" / "data" / "ffpp_c23_sample")
    ap.add_argument("--frames", type=int, default=32, help="frames sampled per video (faces.frames_per_video)")
    ap.add_argument("--videos", type=int, default=7)
    ap.add_argument("--engines", action="store_true", help="torch fp32/bf16 against ONNX Runtime fp32/int8 instead")
    ap.add_argument("--member-crops", type=int, default=16, help="--engines: face crops per member measurement")
    ap.add_argument("--members", nargs="+", help="only these of the default members (default: all)")
    ap.add_argument("--tracking-only", action="store_true", help="only the every-face tracking row")
    args = ap.parse_args()
    videos = sorted(args.data.rglob("*.mp4"))[: args.videos]
    if not videos:
        raise SystemExit(f"no .mp4 under {args.data}")
    params = Params.model_validate({"faces": {"frames_per_video": args.frames}})
    if args.members:
        params = params.model_copy(update={"models": {m: params.models[m] for m in args.members}})
    cfg = params.faces.model_dump()
    tmp = tempfile.TemporaryDirectory()
    predictor, spec, plain = random_ensemble(params, Path(tmp.name))  # the checkpoints stay: engines rebuild from them
    scorer = MediaScorer(predictor, spec, cfg)
    if args.engines:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        with tmp:
            engines(args, predictor, spec, plain, scorer, videos, cfg, Path(tmp.name))
        return
    print(f"{len(videos)} videos, {args.frames} frames each, members {spec['members']}, "
          f"torch threads {torch.get_num_threads()}, device cpu")
    scorer.score_path(videos[0])  # warm-up: first calls allocate and load the detector
    tracking_row(scorer, videos)
    if args.tracking_only:
        return

    def ours() -> list[float | None]:
        return [r.p_fake for r in score_files(scorer, videos, progress=False)]

    fp32, t_ours, c_ours = timed(ours)
    base, t_base, c_base = timed(lambda: plain_loop(predictor, plain, videos, cfg))
    print(f"plain loop        {len(videos) / t_base:7.3f} videos/s  ({t_base:6.1f} s wall, {c_base:6.1f} s CPU)")
    print(f"dfd predict       {len(videos) / t_ours:7.3f} videos/s  ({t_ours:6.1f} s wall, {c_ours:6.1f} s CPU)"
          f"  ratio {t_base / t_ours:.2f}x wall, {c_base / c_ours:.2f}x CPU")
    diff, n = max_diff(fp32, base)
    print(f"  max |score difference| from the plain loop {diff:.2e} over {n} videos")
    try:
        predictor.set_precision("bf16")
        scorer.score_path(videos[0])  # warm-up of the bf16 kernels
        bf16, t_bf, c_bf = timed(ours)
    except (RuntimeError, ValueError) as exc:
        print(f"dfd predict bf16  not run: {exc}")
        return
    print(f"dfd predict bf16  {len(videos) / t_bf:7.3f} videos/s  ({t_bf:6.1f} s wall, {c_bf:6.1f} s CPU)"
          f"  ratio {t_base / t_bf:.2f}x wall, {c_base / c_bf:.2f}x CPU")
    diff, n = max_diff(bf16, fp32)
    print(f"  max |score difference| from fp32 {diff:.2e} over {n} videos (random weights: see the docstring)")


if __name__ == "__main__":
    main()
