"""Training throughput: our training step against a plain timm loop, and our DataLoader alone.

In one process, on the same model, batch, input size and optimiser (AdamW):
- plain: `timm.create_model(...)`, forward, BCE-with-logits, backward, `optimizer.step()`;
- ours: the train stage's `Stepper` (the registered model with its head, warm-up schedule, gradient clipping,
  AMP and channels_last when asked, the NaN guard);
- loader: `FaceCrops` + the default augmentations + a DataLoader with the default `train.num_workers`, decoding
  320 px PNG crops as the faces stage writes them, with no model.

    python benchmarks/train_throughput.py [--model efficientnet] [--size 128] [--batch 16] [--steps 6]
                                          [--device cpu|cuda] [--amp off|bf16|fp16] [--channels-last]

Steps alternate between the two training loops in rounds, and the median round is reported, so that a noisy
neighbour slows both alike. Timings belong here and in notes, never in tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from dfd.data.demo_data import Pose, draw_face, make_identity
from dfd.platform.config import Params, TrainParams
from dfd.training.augment import build_transform
from dfd.training.datasets import FaceCrops
from dfd.training.engine import Stepper
from dfd.training.optim import LrSchedule, build_optimizer
from models import create_model, model_config

TIMM_NAME = {"xception": "legacy_xception", "efficientnet": "efficientnet_b4"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(name: str, x: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME[name], pretrained=False, num_classes=1).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(2):  # warm-up: allocator, cuDNN autotune
        loss_fn(model(x).squeeze(1), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(x).squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return steps * len(x) / (time.perf_counter() - start)


def our_loop(name: str, x: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device, cfg: TrainParams) -> float:
    torch.manual_seed(0)
    model = create_model(name, input_size=x.shape[-1]).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model.parameters(), cfg.lr)
    stepper = Stepper(model, opt, LrSchedule(cfg, 100), cfg, device, [cfg.lr])
    for _ in range(2):
        stepper.micro_batch(x, y, last_of_step=True)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        stepper.micro_batch(x, y, last_of_step=True)
    _sync(device)
    return steps * len(x) / (time.perf_counter() - start)


def loader_rate(name: str, size: int, batch: int, workers: int, batches: int) -> float:
    """Images per second the DataLoader alone delivers with the default augmentations."""
    tmp = Path(tempfile.mkdtemp(prefix="dfd-loader-"))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(64):
        face = draw_face(make_identity(rng, f"i{i}"), Pose(), 320, i)
        cv2.imwrite(str(tmp / f"{i}.png"), face)
        rows.append({"crop": f"{i}.png", "label": i % 2})
    defaults = Params().train
    tf = build_transform(defaults.augment, train=True, **model_config(name, size).preprocessing())
    ds = FaceCrops(pd.DataFrame(rows), tmp, tf)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                        sampler=None, drop_last=True)
    seen, start, it = 0, None, 0
    while it < batches + 1:
        for x, _ in loader:
            if it == 0:
                start = time.perf_counter()  # the first batch pays for worker start-up
            else:
                seen += len(x)
            it += 1
            if it > batches:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet", choices=sorted(TIMM_NAME))
    parser.add_argument("--size", type=int, default=128, help="input side (224 is real; 128 keeps CPU runs short)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--workers", type=int, default=Params().train.num_workers)
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = (torch.arange(args.batch, device=device) % 2).float()
    cfg = TrainParams(amp=args.amp, channels_last=args.channels_last, grad_clip=5.0, warmup_epochs=0)
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(args.model, x, y, args.steps, device))
        ours.append(our_loop(args.model, x, y, args.steps, device, cfg))
    p, o = statistics.median(plain), statistics.median(ours)
    feed = loader_rate(args.model, args.size, args.batch, args.workers, batches=12)
    print(f"model {args.model} | input {args.size} | batch {args.batch} | device {device} | amp {args.amp} | "
          f"channels_last {args.channels_last}")
    print(f"{'plain timm loop':<34}{p:>10.1f} img/s   (rounds: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"{'our training step':<34}{o:>10.1f} img/s   (rounds: {', '.join(f'{v:.1f}' for v in ours)})")
    print(f"{'DataLoader alone, ' + str(args.workers) + ' workers':<34}{feed:>10.1f} img/s")
    print(f"\nours / plain: {o / p:.3f}x   loader / model consumption: {feed / o:.2f}x")


if __name__ == "__main__":
    main()
