"""F3Net (Qian et al., ECCV 2020): frequency-aware decomposition and local frequency statistics, fused by MixBlocks.

Two Xception streams read two frequency views of the face:
- FAD (frequency-aware decomposition): the image's 2-D DCT is split by fixed low/middle/high/all band masks, each
  plus a learnable filter, and each band is brought back to pixels by the inverse DCT: 4 bands x 3 colours = 12
  channels.
- LFS (local frequency statistics): a sliding-window DCT (10x10, stride 2) of the grey image, whose log energies in
  M=6 bands form a 6-channel map.
MixBlocks (cross-attention between the streams) fuse them after Xception's blocks 7 and 12, as in the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import HALF, ModelConfig, register_model
from models.xception_net import EXIT_FLOW, TO_BLOCK7, TO_BLOCK12, Xception


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): `D @ x` is the DCT of a column vector, `D.T @ y` its inverse."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def _band_mask(n: int, lo: float, hi: float) -> torch.Tensor:
    """1 where the anti-diagonal index (i + j) / (2n) lies in [lo, hi), the paper's band split."""
    idx = (torch.arange(n)[:, None] + torch.arange(n)[None, :]).float() / (2 * n)
    return ((idx >= lo) & (idx < hi)).float() if hi < 1.0 else (idx >= lo).float()


class FAD(nn.Module):
    """Frequency-aware decomposition: (B, 3, S, S) -> (B, 12, S, S)."""

    #: (low, high) bounds of the base filters: low, middle, high and all frequencies.
    BANDS = ((0.0, 1 / 16), (1 / 16, 1 / 8), (1 / 8, 1.0), (0.0, 1.0))

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("dct", dct_matrix(size), persistent=False)
        self.register_buffer("base", torch.stack([_band_mask(size, lo, hi) for lo, hi in self.BANDS]),
                             persistent=False)
        # Learnable filters start at zero so that training begins from the fixed band split.
        self.learnable = nn.Parameter(torch.zeros(len(self.BANDS), size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dct
        freq = d @ x @ d.T  # (B, 3, S, S) DCT of every channel
        filters = self.base + (2 * torch.sigmoid(self.learnable) - 1)  # (4, S, S)
        bands = [d.T @ (freq * f) @ d for f in filters]  # 4 x (B, 3, S, S) back in pixel space
        return torch.cat(bands, dim=1)


class LFS(nn.Module):
    """Local frequency statistics: (B, 3, S, S) -> (B, M, (S - w) // s + 1, same).

    Args:
        window: Sliding-window side (10 in the paper).
        stride: Window stride (2 in the paper).
        bands: Number of frequency bands M (6 in the paper).
    """

    def __init__(self, window: int = 10, stride: int = 2, bands: int = 6) -> None:
        super().__init__()
        self.window, self.stride, self.bands = window, stride, bands
        d = dct_matrix(window)
        # The 2-D DCT of a w x w patch, D @ P @ D.T, is (D kron D) @ vec(P) for row-major vec: one (w*w, w*w)
        # product over all patches at once instead of two tiny matrix products per patch.
        self.register_buffer("dct2", torch.kron(d, d), persistent=False)
        idx = (torch.arange(window)[:, None] + torch.arange(window)[None, :]).float() / (2 * window - 1)
        masks = [((idx >= m / bands) & (idx <= (m + 1) / bands)).float() for m in range(bands)]
        self.register_buffer("masks", torch.stack(masks), persistent=False)  # (M, w, w)
        self.learnable = nn.Parameter(torch.zeros(bands, window, window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, _w = x.shape
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, S, S)
        grey = (grey + 1) * 122.5  # back to a 0..255-like range, where the paper's log energies live
        patches = F.unfold(grey, self.window, stride=self.stride)  # (B, w*w, L), each patch row-major
        freq = self.dct2 @ patches  # (B, w*w, L): every patch's DCT
        filters = self.masks + (2 * torch.sigmoid(self.learnable) - 1)  # (M, w, w)
        # Each band's energy is sum_ij |freq_ij| * filter_ij: one (M, w*w) @ (B, w*w, L) product, not a
        # (B, L, M, w, w) broadcast that moved ~50 MB per crop (LFS: 13% of F3Net's CPU time before, 5% now).
        energy = filters.flatten(1) @ freq.abs()  # (B, M, L)
        energy = torch.log10(energy.clamp_min(1e-6) + 1e-15)
        side = (h - self.window) // self.stride + 1
        return energy.reshape(b, self.bands, side, side)


class MixBlock(nn.Module):
    """Cross-attention between the two streams' feature maps, each refined by the other (a residual)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.q_fad, self.q_lfs = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        self.k_fad, self.k_lfs = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        self.gamma_fad = nn.Parameter(torch.zeros(1))
        self.gamma_lfs = nn.Parameter(torch.zeros(1))
        self.bn_fad, self.bn_lfs = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)

    def forward(self, fad: torch.Tensor, lfs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fad, lfs: (B, C, H, W); LFS is resized to FAD's grid when the strides leave them a pixel apart.
        if lfs.shape[-2:] != fad.shape[-2:]:
            lfs = F.interpolate(lfs, size=fad.shape[-2:], mode="bilinear", align_corners=False)
        b, c, h, w = fad.shape
        query = torch.cat([self.q_fad(fad), self.q_lfs(lfs)], dim=-1).reshape(b * c, h, 2 * w)
        key = torch.cat([self.k_fad(fad), self.k_lfs(lfs)], dim=-1).reshape(b * c, h, 2 * w)
        attention = torch.softmax(query @ key.transpose(1, 2), dim=-1).reshape(b, c, h, h)  # (B, C, H, H)
        att_lfs = (attention @ lfs) * (2 * torch.sigmoid(self.gamma_lfs) - 1)
        att_fad = (attention @ fad) * (2 * torch.sigmoid(self.gamma_fad) - 1)
        return fad + self.bn_lfs(att_lfs), lfs + self.bn_fad(att_fad)


class F3Net(nn.Module):
    """FAD and LFS Xception streams fused by MixBlocks after blocks 7 and 12, one logit.

    Args:
        input_size: Input side (299 in the paper); FAD's DCT matrices are built for it.
        dropout: Dropout before the classifier.
        window: LFS window side.
        bands: LFS bands M.
        width: Channel multiplier of both Xception streams (1.0: the paper's; smaller for smoke runs).
    """

    def __init__(self, input_size: int = 299, dropout: float = 0.2, window: int = 10, bands: int = 6,
                 width: float = 1.0) -> None:
        super().__init__()
        self.input_size = input_size
        self.fad = FAD(input_size)
        self.lfs = LFS(window, 2, bands)
        self.fad_net = Xception(12, width)
        # The LFS map is already at half resolution (stride-2 windows): a stride-1 first conv keeps the grids aligned.
        self.lfs_net = Xception(bands, width, first_stride=1)
        self.mix7, self.mix12 = MixBlock(self.fad_net.mix7_channels), MixBlock(self.fad_net.mix12_channels)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.fad_net.num_features * 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, S, S) normalised to [-1, 1]
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"F3Net was built for {self.input_size}px inputs, got {tuple(x.shape[-2:])}")
        a = self.fad_net.run(TO_BLOCK7, self.fad(x))  # (B, 728, ~S/16, ~S/16) at width 1
        b = self.lfs_net.run(TO_BLOCK7, self.lfs(x))  # (B, 728, ~S/16, ~S/16)
        a, b = self.mix7(a, b)
        a, b = self.fad_net.run(TO_BLOCK12, a), self.lfs_net.run(TO_BLOCK12, b)  # (B, 1024, ~S/32, ~S/32)
        a, b = self.mix12(a, b)
        a, b = self.fad_net.run(EXIT_FLOW, a), self.lfs_net.run(EXIT_FLOW, b)  # (B, 2048, ~S/32, ~S/32)
        pooled = torch.cat([a.mean(dim=(-1, -2)), b.mean(dim=(-1, -2))], dim=1)  # (B, 4096)
        return self.head(pooled)


@register_model("f3net", ModelConfig(299, HALF, HALF, "Qian et al., Thinking in Frequency, ECCV 2020"))
def f3net(input_size: int = 299, dropout: float = 0.2, window: int = 10, bands: int = 6,
          width: float = 1.0) -> nn.Module:
    """F3Net with both branches and MixBlock fusion."""
    return F3Net(input_size, dropout, window, bands, width)
