"""The ensemble as one differentiable torch function (for white-box attacks), and members' penultimate embeddings.

Each member is rebuilt from its checkpoint with its registered preprocessing (input size, mean, std from the
checkpoint's `model_config`), done in torch so that gradients reach the pixels: resize, normalise, network, the
member's Platt scaling on its logit, then the fusion (in logit/log space, unclamped: see `fused_logit`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfd.platform.errors import StageError
from models.checkpoint import build_from_checkpoint, load_checkpoint


class _Member(nn.Module):
    """A member from its checkpoint: images in [0, 1] (N, 3, H, W) at any size to its logit (N,)."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__()
        ckpt = load_checkpoint(checkpoint)
        cfg = ckpt["model_config"]
        self.size = int(cfg["input_size"])
        self.net = build_from_checkpoint(ckpt)
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            # "area" matches the serving transform's cv2.INTER_AREA when shrinking; bilinear when enlarging.
            mode = "area" if x.shape[-1] > self.size else "bilinear"
            x = F.interpolate(x, size=(self.size, self.size), mode=mode, **({} if mode == "area" else
                                                                           {"align_corners": False}))
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(x)).float().squeeze(1)  # (N,)


class DifferentiableEnsemble(nn.Module):
    """The fused P(fake) of `ensemble.json` (and its logit), before any monotone post-fusion calibration.

    Fusions (`spec["fusion"]`, as dfd/evaluation/fusion.py fits them; without it, the weighted average of
    `spec["weights"]`): `weighted_average` (weights), `stacking` (a logistic regression on the members' logits:
    `coef`, `intercept`), `confidence` (per-frame weights |p - 0.5| + eps) and `attention` (per-frame weights from a
    softmax gate over the standardised logits: `W`, `b`, `mu`, `sd`).

    Args:
        spec: `ensemble.json` (members, weights, per-member calibration, fusion).
        checkpoints: Member name to its best.pt.
        device: Torch device.

    Raises:
        StageError: For a fusion method this module has no differentiable form of.
    """

    def __init__(self, spec: dict, checkpoints: dict[str, Path], device: str = "cpu") -> None:
        super().__init__()
        fusion = spec.get("fusion") or {"method": "weighted_average", "members": list(spec["weights"]),
                                        "weights": spec["weights"]}
        self.method = fusion["method"]
        if self.method not in ("weighted_average", "stacking", "confidence", "attention"):
            raise StageError(f"white-box attacks have no differentiable form of the '{self.method}' fusion",
                             "set evaluate.adversarial.attacks: [] for this ensemble")
        self.names = list(fusion["members"])
        calibration = spec.get("calibration") or {m: [1.0, 0.0] for m in self.names}
        self.members = nn.ModuleDict({m: _Member(checkpoints[m]) for m in self.names})
        self.register_buffer("ab", torch.tensor([calibration[m] for m in self.names], dtype=torch.float32))
        if self.method == "weighted_average":
            total = sum(fusion["weights"][m] for m in self.names) or 1.0
            self.register_buffer("w", torch.tensor([fusion["weights"][m] / total for m in self.names]))
        elif self.method == "stacking":
            self.register_buffer("w", torch.tensor([fusion["coef"][m] for m in self.names]))
            self.intercept = float(fusion["intercept"])
        elif self.method == "attention":  # gate = softmax(((z - mu) / sd) W + b) (dfd/evaluation/attention.py)
            for key in ("W", "b", "mu", "sd"):
                self.register_buffer(key, torch.tensor(fusion[key], dtype=torch.float32))
        else:
            self.eps = float(fusion.get("eps", 1e-3))
        # The served fusion clips each calibrated member score to its fitted range (fusion.clip_to_range); here on
        # the logit scale, the same bounds (logit clipped as the numpy one is).
        ranges = fusion.get("member_range")
        bounds = [[-np.inf, np.inf] if not ranges else
                  [float(np.log(v / (1 - v))) for v in np.clip(ranges[m], 1e-6, 1 - 1e-6)] for m in self.names]
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.float32))  # (M, 2)
        self.to(device).eval()
        for p in self.parameters():
            p.requires_grad_(False)  # gradients flow to the pixels only

    def fused_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 3, H, W) to the logit of the fused P(fake) (N,), computed without any clamp of the
        gradient (the fitted-range clip below passes it straight through).

        What attacks differentiate: a clamp's gradient is zero outside its range and so is float32 sigmoid's beyond
        a logit of about 17, so a confident model would hand an attack no gradient. Mixtures of probabilities
        (weighted average, confidence) are summed in log space (log-sigmoid), which never saturates.
        """
        z = self.ab[:, 0] * torch.stack([self.members[m](x) for m in self.names], 1) + self.ab[:, 1]  # (N, M)
        # The value of the fitted-range clip, with the gradient of the unclipped logit (straight through): an attack
        # still sees how each member moves, even on a crop outside its range.
        z = z + (torch.maximum(torch.minimum(z, self.bounds[:, 1]), self.bounds[:, 0]) - z).detach()
        if self.method == "stacking":  # the logit of a Platt-scaled probability is its own argument: no clip
            return (z * self.w).sum(1) + self.intercept
        if self.method == "attention":  # the gate reads the clipped logits, as the numpy fusion does
            log_w = F.log_softmax(((z - self.mu) / self.sd) @ self.W + self.b, 1)
        else:  # confidence: weights |p - 0.5| + eps, differentiated like the rest
            w = (self.w.expand_as(z) if self.method == "weighted_average"
                 else (torch.sigmoid(z) - 0.5).abs() + self.eps)
            log_w = torch.where(w > 0, w.clamp_min(1e-30).log(), torch.full_like(w, -torch.inf))  # 0 weight: no term
        return (torch.logsumexp(log_w + F.logsigmoid(z), 1)  # log P(fake)
                - torch.logsumexp(log_w + F.logsigmoid(-z), 1))  # - log P(real)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 3, H, W) to the fused P(fake) (N,)."""
        return torch.sigmoid(self.fused_logit(x))


def penultimate_embedder(checkpoint: Path, device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """A member's penultimate-layer features (the input of its last linear layer), as a function of crops.

    Returns:
        A function of RGB uint8 crops (N, H, W, 3) giving (N, D) float32 features.
    """
    member = _Member(checkpoint).to(device).eval()
    linears = [m for m in member.net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise StageError(f"{checkpoint}: the model has no linear layer to read embeddings before",
                         "set evaluate.drift_member to another member")
    last = linears[-1]

    @torch.no_grad()
    def embed(crops: np.ndarray) -> np.ndarray:
        captured: list[torch.Tensor] = []
        hook = last.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].flatten(1).float()))
        try:
            x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div(255)
            member(x.to(device))
        finally:
            hook.remove()
        return captured[0].cpu().numpy()

    return embed
