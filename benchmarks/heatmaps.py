"""Do heatmaps point at the manipulation? Share of Grad-CAM heat inside known paste masks, against a centre prior.

On demo fakes (`dfd.data.demo_data.blend_fake_with_mask`: the pasted region of each fake is known exactly), each face
is detected and cropped as served scoring crops it, the paste mask is cropped the same way, and the share of each
heatmap's heat inside the mask is averaged: for the ensemble's fused logit and for each member (`dfd.serving.heatmaps`),
against the same share for a centre prior (a Gaussian on the crop centre: faces, and so pastes, sit in the middle of
every crop, so a map must beat this to show it looked at the paste rather than at the face). The mask covers a share
of the crop too (`mask area`): a map spread evenly would score that.

    python benchmarks/heatmaps.py --project DIR [--fakes 24] [--size 256]

DIR holds a trained ensemble as the pipeline leaves it (`artifacts/ensemble/ensemble.json`,
`artifacts/models/*/best.pt`, `data/faces/faces_report.json`), e.g. after `dfd demo`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dfd.data.demo_data import blend_fake_with_mask, make_identity, random_pose
from dfd.data.face_extract import face_crops
from dfd.serving.heatmaps import Explainer, centre_prior, share_inside


def demo_fakes(n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB fake, paste mask) pairs, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        target, source = make_identity(rng, f"t{i}"), make_identity(rng, f"s{i}")
        bgr, mask = blend_fake_with_mask(target, source, random_pose(rng), size, rng, int(rng.integers(1 << 31)))
        out.append((cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), mask))
    return out


def crop_mask(mask: np.ndarray, box: list[float], margin: float, size: int) -> np.ndarray:
    """The mask cut and resized as `square_crop` cuts the face (edge padding: zeros outside the image)."""
    from dfd.data.face_detect import Box, square_crop

    as_image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    crop, _ = square_crop(as_image, Box(*box), margin, size)
    return crop[..., 0].astype(np.float32) / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--fakes", type=int, default=24)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a busy small CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads((args.project / "artifacts/ensemble/ensemble.json").read_text())
    checkpoints = {m: args.project / f"artifacts/models/{m}/best.pt" for m in spec["members"]}
    faces = json.loads((args.project / "data/faces/faces_report.json").read_text())["params"]
    explainer = Explainer(spec, checkpoints)
    crops, masks = [], []
    for rgb, mask in demo_fakes(args.fakes, args.size):
        found = face_crops([(0, rgb)], faces)
        if found:
            crops.append(found[0]["crop"])
            masks.append(crop_mask(mask, found[0]["box"], faces["margin"], faces["crop_size"]))
    if not crops:
        raise SystemExit("no face found in the demo fakes")
    x, m = np.stack(crops), np.stack(masks)
    t0 = time.perf_counter()
    fused, shares = explainer.ensemble_map(x, "fake")
    members = explainer.member_maps(x, "fake")
    took = time.perf_counter() - t0
    prior = np.broadcast_to(centre_prior(m.shape[1:]), m.shape)

    def mean_share(maps: np.ndarray) -> tuple[float, int]:
        vals = np.array([share_inside(h, k) for h, k in zip(maps, m, strict=True)])
        return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"), int(np.isfinite(vals).sum())

    print(f"{len(crops)} demo fakes of {args.fakes} with a face, crops {faces['crop_size']} px, members "
          f"{spec['members']}, heatmaps in {took:.1f} s ({args.threads} torch thread(s))")
    print(f"mask area (an even map's share)   {float(m.mean()):.3f}")
    base, _ = mean_share(prior)
    print(f"centre prior                      {base:.3f}")
    for name, maps in [("ensemble (fused logit)", fused), *members.items()]:
        share, n = mean_share(maps)
        print(f"{name:<33} {share:.3f}  ratio to the centre prior {share / base:.2f}x  ({n} crops with heat)")
    print("ensemble heat by member: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))


if __name__ == "__main__":
    main()
