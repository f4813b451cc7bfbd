"""Face detectors side by side: speed, face share, precision, and how well dlib's landmarks fit their boxes.

Frame sets:
- `ffpp`: frames sampled uniformly from each FF++ clip (every one holds one clear face);
- `hard`: the frames `faces.frames_per_video` = 32 samples from `hard_faces/short_hamilton_clip.mp4`, plus its
  stills, labelled by hand in `benchmarks/hard_faces_labels.json` (which frames show a findable face);
- `no_face`: face-free frames made from FF++ frames: the widest strip of the frame beside the face region (every
  detector's box, enlarged 2x and extended down over the body), when it is at least 128 px each way.

Per detector (or fallback chain, `mtcnn+dlib_hog`): frames/s of detection on copies downscaled to
`faces.detect_max_side` with one OpenCV thread (as in a faces pool worker), face share (frames with a face where
there is one to find), frames with a box where there is none, and precision = frames with a box that should have
one / frames with a box (a box on a face frame counts as right: check the boxes with `--sheet`).

Landmarks: on FF++ frames where both dlib_hog and mtcnn found the face, dlib's 68 points predicted from each box:
the mean distance between the two sets, in % of the inter-ocular distance (outer eye corners) and in pixels of the
`faces.crop_size` crop.

    python benchmarks/face_detectors.py [--ffpp-frames 16] [--detectors dlib_hog mtcnn mtcnn+dlib_hog dlib_cnn]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from dfd.data.face_detect import Box, Landmarks, create_detector, detect_chain, iou
from dfd.data.media import read_rgb, sample_video_frames
from dfd.platform.config import FacesParams

PROJECT = Path(__file__).resolve().parent.parent
LABELS = PROJECT / "benchmarks" / "hard_faces_labels.json"
MIN_STRIP = 128  # px: a face-free strip narrower than this is not a realistic frame


def ffpp_frames(root: Path, per_clip: int) -> list[np.ndarray]:
    """`per_clip` frames of every clip under `root`."""
    return [rgb for clip in sorted(root.rglob("*.mp4")) for _, rgb in sample_video_frames(clip, per_clip)[0]]


def hard_frames(root: Path) -> tuple[list[np.ndarray], list[bool]]:
    """The hand-labelled frames of `hard_faces/` and whether each shows a findable face."""
    labels = json.loads(LABELS.read_text())
    frames, _ = sample_video_frames(root / labels["clip"], labels["frames_sampled"])
    images = [rgb for _, rgb in frames]
    truth = [labels["face"][str(idx)] for idx, _ in frames]
    for name in labels["stills"]:
        rgb = read_rgb(root / name)
        if rgb is not None:
            images.append(rgb)
            truth.append(True)
    return images, truth


def face_free(rgb: np.ndarray, boxes: list[Box]) -> np.ndarray | None:
    """The widest strip of `rgb` away from every box (enlarged 2x, extended down over the body), or None."""
    w = rgb.shape[1]
    x0 = min(b.x0 - (b.x1 - b.x0) / 2 for b in boxes)
    x1 = max(b.x1 + (b.x1 - b.x0) / 2 for b in boxes)
    y0 = min(b.y0 - (b.y1 - b.y0) / 2 for b in boxes)
    strips = [rgb[:, :max(int(x0), 0)], rgb[:, min(int(x1) + 1, w):], rgb[:max(int(y0), 0), :]]
    strips = [s for s in strips if min(s.shape[:2]) >= MIN_STRIP]
    return max(strips, key=lambda s: s.shape[0] * s.shape[1]).copy() if strips else None


def run_chain(names: list[str], images: list[np.ndarray], cfg: FacesParams) -> tuple[list[list[Box]], float]:
    """Boxes per image from the chain `names`, and the CPU seconds detection took (models built beforehand).

    CPU time, not wall time: with one OpenCV thread it is what a pool worker spends, whatever else the machine runs.
    """
    chain = [(n, create_detector(n, cfg.upsample, confidence=cfg.mtcnn_confidence,
                                 min_face_size=cfg.mtcnn_min_face_size)) for n in names]
    detect_chain(chain, images[:1], cfg.detect_max_side)  # warm-up: OpenCV DNN builds its graph on first use
    start = time.process_time()
    found = detect_chain(chain, images, cfg.detect_max_side)
    return [b for b, _ in found], time.process_time() - start


def largest(boxes: list[Box]) -> Box | None:
    """The box the faces stage keeps (`all_faces: false`)."""
    return max(boxes, key=lambda b: b.area) if boxes else None


def landmark_agreement(images: list[np.ndarray], hog: list[list[Box]], mtcnn: list[list[Box]],
                       cfg: FacesParams) -> dict[str, float]:
    """Mean distance between dlib's 68 points from the HOG box and from the MTCNN box of the same face."""
    lm = Landmarks()
    rel, px = [], []
    for rgb, hb, mb in zip(images, hog, mtcnn, strict=True):
        a = largest(hb)
        b = max(mb, key=lambda x: iou(x, a)) if a and mb else None  # the same face, not another one in the frame
        if a is None or b is None or iou(a, b) < 0.3:
            continue
        pa, pb = lm(rgb, a), lm(rgb, b)
        dist = np.linalg.norm(pa - pb, axis=1).mean()
        rel.append(dist / np.linalg.norm(pa[36] - pa[45]))
        px.append(dist * cfg.crop_size / (max(a.x1 - a.x0, a.y1 - a.y0) * cfg.margin))
    return {"faces": len(rel), "mean_iod_pct": 100 * float(np.mean(rel)),
            "p95_iod_pct": 100 * float(np.percentile(rel, 95)), "mean_crop_px": float(np.mean(px))}


def sheet(path: Path, images: list[np.ndarray], boxes: list[list[Box]]) -> None:
    """A contact sheet of `images` with their boxes, to check by eye that boxes sit on faces."""
    tiles = []
    for rgb, bs in zip(images, boxes, strict=True):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for b in bs:
            cv2.rectangle(bgr, (int(b.x0), int(b.y0)), (int(b.x1), int(b.y1)), (0, 255, 0), 3)
        tiles.append(cv2.resize(bgr, (256, 192)))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 6)
    cv2.imwrite(str(path), np.vstack([np.hstack(tiles[i:i + 6]) for i in range(0, len(tiles), 6)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = PROJECT.parent / "shared" / "data"
    parser.add_argument("--ffpp", type=Path, default=data / "ffpp_c23_sample")
    parser.add_argument("--hard", type=Path, default=data / "hard_faces")
    parser.add_argument("--ffpp-frames", type=int, default=16, help="frames per FF++ clip")
    parser.add_argument("--detectors", nargs="+", default=["dlib_hog", "mtcnn", "mtcnn+dlib_hog"])
    parser.add_argument("--mtcnn-confidence", type=float, default=FacesParams().mtcnn_confidence)
    parser.add_argument("--sheet", type=Path, help="write contact sheets of the boxes into this folder")
    args = parser.parse_args()
    for d in (args.ffpp, args.hard):
        if not d.is_dir():
            raise SystemExit(f"benchmark data not found: {d}")
    cv2.setNumThreads(1)  # one pool worker's view: the faces stage runs one process per core
    cfg = FacesParams(mtcnn_confidence=args.mtcnn_confidence)
    ffpp = ffpp_frames(args.ffpp, args.ffpp_frames)
    hard, hard_truth = hard_frames(args.hard)
    results = {name: {"ffpp": run_chain(name.split("+"), ffpp, cfg)} for name in args.detectors}
    for name in ("dlib_hog", "mtcnn"):  # both references for the face-free strips and the landmarks
        results.setdefault(name, {"ffpp": run_chain([name], ffpp, cfg)})
    reference = [results["dlib_hog"]["ffpp"][0][i] + results["mtcnn"]["ffpp"][0][i] for i in range(len(ffpp))]
    no_face = [s for rgb, bs in zip(ffpp[::4], reference[::4], strict=True) if bs
               for s in [face_free(rgb, bs)] if s is not None]
    # On FF++ the subject is HOG's largest box (HOG puts no box off a face there: check with --sheet); a kept box
    # elsewhere (a face on a screen behind the anchor, a window) is a wrong face.
    subject = [largest(b) for b in results["dlib_hog"]["ffpp"][0]]
    sets = {"ffpp": (ffpp, [True] * len(ffpp)), "hard": (hard, hard_truth),
            "no_face": (no_face, [False] * len(no_face))}
    print(f"frames: ffpp {len(ffpp)}, hard {len(hard)} ({sum(hard_truth)} with a findable face), "
          f"no_face {len(no_face)}; detection at {cfg.detect_max_side} px, 1 OpenCV thread, mtcnn confidence "
          f"{cfg.mtcnn_confidence}\n")
    print(f"{'detector':<18}{'set':<9}{'frames/s':>9}{'face share':>12}{'false pos':>11}{'wrong face':>12}"
          f"{'precision':>11}")
    for name in args.detectors:
        right = wrong = 0
        for set_name, (images, truth) in sets.items():
            if set_name not in results[name]:
                results[name][set_name] = run_chain(name.split("+"), images, cfg)
            boxes, secs = results[name][set_name]
            hits = [bool(b) for b in boxes]
            with_face = sum(truth)
            found = sum(h and t for h, t in zip(hits, truth, strict=True))
            false_pos = sum(h and not t for h, t in zip(hits, truth, strict=True))
            off = 0
            if set_name == "ffpp":
                off = sum(1 for b, s in zip(boxes, subject, strict=True) if b and s and iou(largest(b), s) < 0.3)
            right, wrong = right + found - off, wrong + false_pos + off
            share = f"{found / with_face:.1%}" if with_face else "-"
            precision = f"{(found - off) / (found + false_pos):.1%}" if found + false_pos else "-"  # no box at all
            print(f"{name:<18}{set_name:<9}{len(images) / secs:>9.2f}{share:>12}{false_pos:>11}{off:>12}"
                  f"{precision:>11}")
            if args.sheet:
                args.sheet.mkdir(parents=True, exist_ok=True)
                sheet(args.sheet / f"{name}_{set_name}.png", images, boxes)
        print(f"{name:<18}{'all':<9}{'':>9}{'':>12}{'':>11}{'':>12}{right / max(right + wrong, 1):>11.1%}")
    agree = landmark_agreement(ffpp, results["dlib_hog"]["ffpp"][0], results["mtcnn"]["ffpp"][0], cfg)
    print(f"\nlandmarks from the MTCNN box vs the HOG box, {agree['faces']} FF++ faces: mean distance "
          f"{agree['mean_iod_pct']:.1f}% of the inter-ocular distance (p95 {agree['p95_iod_pct']:.1f}%), "
          f"{agree['mean_crop_px']:.1f} px in a {cfg.crop_size} px crop")


if __name__ == "__main__":
    main()
