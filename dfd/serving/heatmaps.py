"""Grad-CAM heatmaps of face crops: where each member's evidence came from, and the ensemble's fused logit's.

Computed with captum's `LayerGradCam` (Meta's attribution library for PyTorch: one package with no dependencies
beyond torch, numpy and matplotlib, which are here already; pytorch-grad-cam would add ttach and offers more CAM
variants we do not need). The ensemble's map is the Grad-CAM of `DifferentiableEnsemble.fused_logit` (the function
white-box attacks differentiate) at every member's last convolution, summed: each member's term is its share of the
fused logit's first-order evidence, and `member_shares` reports it.

A heatmap shows where in the crop the activations that raised the detector's logit lie (its evidence, at the
resolution of its last convolution, upsampled). It is not a localisation of the manipulation: a detector can be
right for the wrong reason (a compression block, a blending boundary outside the swapped region), and a heat-free
region is not proven untouched. `benchmarks/heatmaps.py` measures how much of the heat falls inside known paste
masks against a centre prior.

F3Net has no RGB stream: both its streams read frequencies (FAD: DCT bands filtered back to pixels; LFS: local
frequency statistics on a stride-2 grid), and both keep the spatial layout, so its map is the sum of the two
streams' Grad-CAMs at their exit flows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dfd.serving.differentiable import DifferentiableEnsemble


def cam_layers(net: nn.Module) -> list[nn.Module]:
    """The layers whose Grad-CAM explains `net`: its last convolution, or each stream's for a two-stream F3Net."""
    streams = [getattr(net, n) for n in ("fad_net", "lfs_net") if isinstance(getattr(net, n, None), nn.Module)]
    out = []
    for part in streams or [net]:
        convs = [m for m in part.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{type(part).__name__} has no convolution to take a Grad-CAM at")
        out.append(convs[-1])
    return out


def _to_tensor(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB uint8 crops (N, H, W, 3) to images in [0, 1] (N, 3, H, W) that require grad (so hooks see gradients)."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div(255).to(device)
    return x.requires_grad_(True)


def grad_cam(forward: Callable[[torch.Tensor], torch.Tensor], layers: list[nn.Module], crops: np.ndarray,
             device: torch.device) -> list[np.ndarray]:
    """Grad-CAM of the scalar `forward(x)` (N,) at each of `layers`, upsampled to the crop size, before ReLU.

    Returns:
        One (N, H, W) float32 map per layer; sum them and clip at 0 for a combined map.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    x = _to_tensor(crops, device)
    out = []
    for layer in layers:
        with torch.enable_grad():
            attr = LayerGradCam(forward, layer).attribute(x, relu_attributions=False)  # (N, 1, h, w)
        up = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        out.append(up[:, 0].float().cpu().numpy())
    return out


def _sign(toward: str) -> float:
    if toward not in ("fake", "real"):
        raise ValueError(f"heatmaps explain 'fake' or 'real', not {toward!r}")
    return 1.0 if toward == "fake" else -1.0


class Explainer:
    """Heatmaps of one ensemble: each member on its own logit, and the ensemble on its fused logit.

    Args:
        spec: `ensemble.json`.
        checkpoints: Member name to its best.pt.
        device: Torch device.
    """

    def __init__(self, spec: dict, checkpoints: dict[str, Path], device: str = "cpu") -> None:
        self.ensemble = DifferentiableEnsemble(spec, checkpoints, device)
        self.device = torch.device(device)
        self.layers = {m: cam_layers(self.ensemble.members[m].net) for m in self.ensemble.names}

    def member_maps(self, crops: np.ndarray, toward: str = "fake") -> dict[str, np.ndarray]:
        """Each member's Grad-CAM of its own logit (N, H, W), clipped at 0: the evidence for `toward` ("fake": the
        logit; "real": its negative, the evidence a real verdict rests on)."""
        sign = _sign(toward)
        return {m: np.clip(sum(grad_cam(lambda x, m=m: sign * self.ensemble.members[m](x), self.layers[m], crops,
                                        self.device)), 0, None)
                for m in self.ensemble.names}

    def ensemble_map(self, crops: np.ndarray, toward: str = "fake") -> tuple[np.ndarray, dict[str, float]]:
        """The Grad-CAM of the fused logit (negated `toward` "real") at every member's layers, summed and clipped
        at 0 (N, H, W), and each member's share of its positive heat (0 for a member the fusion weighs 0)."""
        sign = _sign(toward)
        terms = {m: sum(grad_cam(lambda x: sign * self.ensemble.fused_logit(x), self.layers[m], crops, self.device))
                 for m in self.ensemble.names}
        total = np.clip(sum(terms.values()), 0, None)
        positive = {m: float(np.clip(t, 0, None).sum()) for m, t in terms.items()}
        norm = sum(positive.values()) or 1.0
        return total, {m: v / norm for m, v in positive.items()}


def overlay(crop: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The crop (H, W, 3) RGB uint8 with `heat` (H, W) drawn over it in a colour map (normalised to its max)."""
    import cv2

    peak = float(heat.max())
    norm = (heat / peak if peak > 0 else np.zeros_like(heat)) * 255
    colour = cv2.cvtColor(cv2.applyColorMap(norm.astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (crop.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


def share_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's heat inside `mask` (weights in [0, 1], same shape); NaN for a map with no heat."""
    total = float(heat.sum())
    return float((heat * mask).sum() / total) if total > 0 else float("nan")


def centre_prior(shape: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """A Gaussian centred on the crop (sigma as a share of its side): the baseline a heatmap must beat, since the
    face, and so any manipulation of it, sits in the middle of every crop."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-(((xx - (w - 1) / 2) / (sigma * w)) ** 2 + ((yy - (h - 1) / 2) / (sigma * h)) ** 2) / 2)
