"""Batch-level augmentations chosen by name (`train.batch_augment`): MixUp and CutMix with soft labels."""

from __future__ import annotations

import numpy as np
import torch

from dfd.platform.errors import ConfigError

BATCH_AUGMENTATIONS = ("mixup", "cutmix")


def check_names(names: list[str]) -> None:
    """Fail with the valid names when params name an unknown batch augmentation."""
    unknown = [n for n in names if n not in BATCH_AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"unknown batch augmentation(s) {unknown} in train.batch_augment",
                          f"choose from {', '.join(BATCH_AUGMENTATIONS)}")


def mix_batch(x: torch.Tensor, y: torch.Tensor, names: list[str], p: float, alpha: float,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability `p`, apply one of `names` to the batch; labels become the mixing proportions.

    Args:
        x: Images (B, C, H, W).
        y: Float labels (B,).
        names: Candidate augmentations ("mixup", "cutmix").
        p: Probability of mixing this batch.
        alpha: Beta(alpha, alpha) concentration of the mixing ratio.
        gen: Generator, so that resumed runs mix the same way.
    """
    if not names or len(x) < 2 or torch.rand(1, generator=gen).item() >= p:
        return x, y
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
    name = names[int(rng.integers(len(names)))]
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(x))).to(x.device)
    if name == "mixup":
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    h, w = x.shape[-2:]
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the label follows the area actually pasted
    return x, kept * y + (1 - kept) * y[perm]
