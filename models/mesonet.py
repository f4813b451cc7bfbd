"""MesoNet (Afchar et al., WIFS 2018): Meso4 and MesoInception4, mesoscopic detectors of a few thousand weights."""

from __future__ import annotations

import torch
from torch import nn

from models.registry import HALF, ModelConfig, register_model

_PAPER = "Afchar et al., MesoNet: a Compact Facial Video Forgery Detection Network, WIFS 2018"


def _conv_block(cin: int, cout: int, k: int, pool: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True), nn.BatchNorm2d(cout),
                         nn.MaxPool2d(pool, pool))


class _MesoHead(nn.Module):
    """Dropout, a 16-unit hidden layer with leaky ReLU, dropout, one logit (the paper's classifier)."""

    def __init__(self, in_features: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, 16), nn.LeakyReLU(0.1),
                                 nn.Dropout(dropout), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Meso4(nn.Module):
    """Four conv blocks (8-8-16-16 filters, batch norm, max pooling), then the dense head.

    Args:
        input_size: Input side; the paper uses 256. The total stride is 32.
        dropout: Dropout of the head (0.5 in the paper).
    """

    def __init__(self, input_size: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_block(3, 8, 3, 2), _conv_block(8, 8, 5, 2), _conv_block(8, 16, 5, 2),
                                      _conv_block(16, 16, 5, 4))
        side = input_size // 32
        self.head = _MesoHead(16 * side * side, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, S, S) -> features (B, 16, S/32, S/32) -> logits (B, 1)
        return self.head(self.features(x))


class _InceptionLayer(nn.Module):
    """MesoInception block: 1x1, 3x3, dilated 3x3 (d=2) and dilated 3x3 (d=3) branches, concatenated."""

    def __init__(self, cin: int, a: int, b: int, c: int, d: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(cin, a, 1)
        self.b2 = nn.Sequential(nn.Conv2d(cin, b, 1), nn.Conv2d(b, b, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(cin, c, 1), nn.Conv2d(c, c, 3, padding=2, dilation=2))
        self.b4 = nn.Sequential(nn.Conv2d(cin, d, 1), nn.Conv2d(d, d, 3, padding=3, dilation=3))
        self.post = nn.Sequential(nn.ReLU(inplace=True), nn.BatchNorm2d(a + b + c + d), nn.MaxPool2d(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1))


class MesoInception4(nn.Module):
    """Two inception blocks (1-4-4-2, 2-4-4-2) replace Meso4's first two convs.

    Args:
        input_size: Input side; the paper uses 256.
    """

    def __init__(self, input_size: int = 256) -> None:
        super().__init__()
        self.features = nn.Sequential(_InceptionLayer(3, 1, 4, 4, 2), _InceptionLayer(11, 2, 4, 4, 2),
                                      _conv_block(12, 16, 5, 2), _conv_block(16, 16, 5, 4))
        side = input_size // 32
        self.head = _MesoHead(16 * side * side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, S, S) -> features (B, 16, S/32, S/32) -> logits (B, 1)
        return self.head(self.features(x))


@register_model("mesonet", ModelConfig(256, HALF, HALF, _PAPER))
def mesonet(input_size: int = 256, dropout: float = 0.5) -> nn.Module:
    """Meso4, the paper's main model (27,977 parameters at 256x256)."""
    return Meso4(input_size, dropout)


@register_model("mesoinception4", ModelConfig(256, HALF, HALF, _PAPER))
def mesoinception4(input_size: int = 256) -> nn.Module:
    """MesoInception4, the paper's inception variant."""
    return MesoInception4(input_size)
