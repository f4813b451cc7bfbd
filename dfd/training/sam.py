"""Sharpness-aware minimisation (Foret et al., ICLR 2021), as the SBI paper trains: `train.optimizer: sam`.

Each optimiser step takes two gradients: g at the weights w, then g' at w + rho * g / ||g||, and steps the base
optimiser (SGD with momentum) with g'. With gradient accumulation both gradients are taken over the whole
accumulation group (the micro-batches are replayed), and under DDP both are all-reduced before use, so N ranks
still compute exactly what one process computes with N-step accumulation (the engine's contract).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def ascend(params: list[nn.Parameter], rho: float) -> list[torch.Tensor | None]:
    """Move every parameter to w + rho * g / ||g|| (in place); returns the offsets, for `descend`.

    The direction is independent of a loss scale (fp16's GradScaler), so scaled gradients serve as they are;
    a non-finite gradient (an overflowed fp16 step, which the scaler then skips) leaves the weights unmoved.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return [None] * len(params)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    if not torch.isfinite(norm):
        return [None] * len(params)
    scale = rho / (norm + 1e-12)
    offsets: list[torch.Tensor | None] = []
    with torch.no_grad():
        for p in params:
            e = None if p.grad is None else (p.grad.float() * scale).to(p.dtype)
            if e is not None:
                p.add_(e)
            offsets.append(e)
    return offsets


def descend(params: list[nn.Parameter], offsets: list[torch.Tensor | None]) -> None:
    """Undo `ascend`: back to w, where the base optimiser steps with the gradient taken at w + e."""
    with torch.no_grad():
        for p, e in zip(params, offsets, strict=True):
            if e is not None:
                p.sub_(e)


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Batch-norm running statistics stay as they are during the second (perturbed) pass: one update per batch."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
