"""Optimisers and learning-rate schedules chosen by name, with linear warm-up.

Every schedule is a multiplier of the base learning rate computed per optimiser step, so warm-up composes with
cosine, step and plateau alike, and the whole state is a few numbers that checkpoints carry.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dfd.platform.config import TrainParams


def build_optimizer(cfg: TrainParams, params: Any, lr: float) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (Nesterov momentum 0.9) by `cfg.optimizer`; `sam` steps SGD with momentum 0.9 (the SBI
    paper's base optimiser) with the gradients the engine takes at the perturbed weights (dfd/training/sam.py)."""
    if cfg.optimizer == "sam":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)


class LrSchedule:
    """Learning-rate multiplier per optimiser step: linear warm-up, then cosine, step, plateau or constant.

    Args:
        cfg: Training params (scheduler, warm-up, step size, gamma, plateau patience).
        steps_per_epoch: Optimiser steps per epoch (after gradient accumulation).
    """

    def __init__(self, cfg: TrainParams, steps_per_epoch: int) -> None:
        self.kind = cfg.scheduler
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.total = max(cfg.epochs * self.steps_per_epoch, 1)
        self.warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.step_epochs, self.gamma, self.patience = cfg.step_epochs, cfg.gamma, cfg.plateau_patience
        self.plateau_factor, self.best, self.bad_epochs = 1.0, -math.inf, 0

    def factor(self, step: int) -> float:
        """The multiplier for optimiser step `step` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            progress = (step - self.warmup) / max(self.total - self.warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if self.kind == "step":
            return self.gamma ** (step // (self.step_epochs * self.steps_per_epoch))
        if self.kind == "plateau":
            return self.plateau_factor
        return 1.0

    def epoch_end(self, metric: float) -> None:
        """Plateau: cut the rate by `gamma` after `patience` epochs without a better validation metric."""
        if self.kind != "plateau" or math.isnan(metric):
            return
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_factor *= self.gamma
                self.bad_epochs = 0

    def apply(self, optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int) -> None:
        """Set every parameter group's rate for `step`."""
        f = self.factor(step)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * f

    def state_dict(self) -> dict[str, float]:
        return {"plateau_factor": self.plateau_factor, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.plateau_factor, self.best, self.bad_epochs = (state["plateau_factor"], state["best"],
                                                           int(state["bad_epochs"]))
