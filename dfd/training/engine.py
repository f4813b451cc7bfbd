"""The training step and loop of one epoch: mixed precision, gradient accumulation and clipping, batch mixing.

Kept apart from the train stage (checkpoints, resume, outputs) so that the benchmark times exactly the step the
stage runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dfd.platform.config import TrainParams
from dfd.platform.errors import TrainingError
from dfd.training.batch_augment import mix_batch
from dfd.training.optim import LrSchedule
from dfd.training.sam import ascend, descend, frozen_norm_stats


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp`, or None for full precision (always on CPU)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@dataclass
class Stepper:
    """One optimiser's training step, configured once per run.

    Attributes:
        model: The module being trained (DDP-wrapped when distributed).
        optimizer: Its optimiser.
        schedule: Learning-rate multiplier per optimiser step.
        cfg: Training params (accumulation, clipping, mixing, channels_last).
        device: Where batches go.
        base_lrs: Each parameter group's base rate.
        step: Optimiser steps taken so far (drives the schedule).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    cfg: TrainParams
    device: torch.device
    base_lrs: list[float]
    step: int = 0
    loss_fn: nn.Module = field(default_factory=nn.BCEWithLogitsLoss)

    def __post_init__(self) -> None:
        self.dtype = amp_dtype(self.cfg.amp, self.device)
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.memory_format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        # SAM replays the accumulation group's micro-batches at the perturbed weights (dfd/training/sam.py).
        self.sam = self.cfg.optimizer == "sam"
        self._group: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _backward(self, x: torch.Tensor, y: torch.Tensor, last_of_step: bool) -> torch.Tensor:
        no_sync = getattr(self.model, "no_sync", None)
        # Under DDP, gradients are all-reduced only on the micro-batch that ends an accumulation step.
        sync = contextlib.nullcontext() if last_of_step or no_sync is None else no_sync()
        with sync:
            with self._autocast():
                loss = self.loss_fn(self.model(x).squeeze(1).float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at optimiser step {self.step + 1}",
                                    "lower the learning rate or check the inputs; last.pt holds the previous epoch")
            self.scaler.scale(loss / self.cfg.grad_accum_steps).backward()
        return loss

    def _sam_second_pass(self) -> None:
        """Replace the group's gradient by the one at w + rho * g / ||g||, taken over the same micro-batches."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        offsets = ascend(params, self.cfg.sam_rho)
        self.optimizer.zero_grad(set_to_none=True)
        with frozen_norm_stats(self.model):
            for k, (gx, gy) in enumerate(self._group):
                self._backward(gx, gy, last_of_step=k == len(self._group) - 1)
        descend(params, offsets)
        self._group.clear()

    def micro_batch(self, x: torch.Tensor, y: torch.Tensor, last_of_step: bool) -> float:
        """Forward and backward of one micro-batch; steps the optimiser when `last_of_step`. Returns the loss."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        y = y.to(self.device, non_blocking=True)
        loss = self._backward(x, y, last_of_step)
        if self.sam:
            self._group.append((x, y))
        if last_of_step:
            if self.sam:
                self._sam_second_pass()
            self.schedule.apply(self.optimizer, self.base_lrs, self.step)
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        return float(loss.item())


def train_epoch(stepper: Stepper, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int,
                gen: torch.Generator, desc: str, progress: bool) -> dict[str, float]:
    """Run one epoch of at most `steps` optimiser steps; returns mean loss and images per second."""
    cfg = stepper.cfg
    stepper.model.train()
    micro_total = steps * cfg.grad_accum_steps
    if hasattr(batches, "__len__"):  # whole accumulation groups only: a partial one would leak into the next step
        micro_total = min(micro_total, len(batches) - len(batches) % cfg.grad_accum_steps)
    losses, seen = [], 0
    start = time.perf_counter()
    bar = tqdm(total=micro_total, desc=desc, leave=False, disable=not progress)
    for i, (x, y) in enumerate(batches):
        if i >= micro_total:
            break
        x, y = mix_batch(x, y, cfg.batch_augment, cfg.batch_augment_prob, cfg.mix_alpha, gen)
        losses.append(stepper.micro_batch(x, y, last_of_step=(i + 1) % cfg.grad_accum_steps == 0))
        seen += len(x)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    if stepper.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"),
            "images_per_s": seen / max(elapsed, 1e-9), "lr": stepper.optimizer.param_groups[0]["lr"]}
