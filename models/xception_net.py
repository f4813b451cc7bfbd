"""The original Xception (Chollet, CVPR 2017) with a width multiplier, shared by the Xception detector and F3Net.

At `width=1.0` this is timm's `legacy_xception` module for module (same names, same shapes: a test compares the
state dicts), so timm's ImageNet weights load into it. Smaller widths scale every channel count, which keeps the
architecture and lets tests and CPU smoke runs train it in seconds.
"""

from __future__ import annotations

import torch
from timm.models.xception import Block, SeparableConv2d
from torch import nn

# Channel counts of the original network, in order: stem, entry blocks 1-3, middle (728), block 12, exit convs.
STEM, ENTRY, MIDDLE, EXIT_BLOCK, EXIT = (32, 64), (128, 256, 728), 728, 1024, (1536, 2048)


def scaled(channels: int, width: float) -> int:
    """`channels` x `width`, rounded to a multiple of 8 (at least 8) so grouped convs stay hardware-friendly."""
    return channels if width == 1.0 else max(8, round(channels * width / 8) * 8)


class Xception(nn.Module):
    """Xception feature extractor: (B, in_chans, S, S) -> (B, num_features, ~S/32, ~S/32) before pooling.

    Args:
        in_chans: Input channels (F3Net's streams take 12 FAD and 6 LFS channels).
        width: Channel multiplier; 1.0 is the paper's network.
        first_stride: Stride of the first convolution (F3Net's LFS stream uses 1, its input is already halved).
    """

    hub_name = "legacy_xception"  # `pretrained: hub` seeds this module with timm's ImageNet weights (width 1 only)

    def __init__(self, in_chans: int = 3, width: float = 1.0, first_stride: int = 2) -> None:
        super().__init__()
        c1, c2 = (scaled(c, width) for c in STEM)
        e1, e2, e3 = (scaled(c, width) for c in ENTRY)
        mid, exit_block = scaled(MIDDLE, width), scaled(EXIT_BLOCK, width)
        x1, x2 = (scaled(c, width) for c in EXIT)
        self.mix7_channels, self.mix12_channels, self.num_features = mid, exit_block, x2
        self.conv1 = nn.Conv2d(in_chans, c1, 3, first_stride, 0, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(c1), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c1, c2, 3, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(c2), nn.ReLU(inplace=True)
        self.block1 = Block(c2, e1, 2, 2, start_with_relu=False)
        self.block2 = Block(e1, e2, 2, 2)
        self.block3 = Block(e2, e3, 2, 2)
        # Blocks 4-11: the middle flow, eight residual blocks at constant width.
        for i in range(4, 12):
            setattr(self, f"block{i}", Block(e3 if i == 4 else mid, mid, 3, 1))
        self.block12 = Block(mid, exit_block, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(exit_block, x1, 3, 1, 1)
        self.bn3, self.act3 = nn.BatchNorm2d(x1), nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(x1, x2, 3, 1, 1)
        self.bn4, self.act4 = nn.BatchNorm2d(x2), nn.ReLU(inplace=True)
        for m in self.modules():  # the initialisation timm uses for this network
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def run(self, names: list[str], x: torch.Tensor) -> torch.Tensor:
        """Apply the named submodules in order (F3Net fuses its two streams between blocks)."""
        for name in names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, S, S) -> (B, num_features): the whole network, then global average pooling.
        return self.run(ALL, x).mean(dim=(-1, -2))


# The network in three runs, cut where F3Net puts its MixBlocks (after blocks 7 and 12).
TO_BLOCK7 = ["conv1", "bn1", "act1", "conv2", "bn2", "act2"] + [f"block{i}" for i in range(1, 8)]
TO_BLOCK12 = [f"block{i}" for i in range(8, 13)]
EXIT_FLOW = ["conv3", "bn3", "act3", "conv4", "bn4", "act4"]
ALL = TO_BLOCK7 + TO_BLOCK12 + EXIT_FLOW
