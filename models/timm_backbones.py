"""Xception and EfficientNet-B4: timm backbones with a deepfake head (the FaceForensics++ and DFDC baselines)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from models.registry import ModelConfig, register_model


class BackboneClassifier(nn.Module):
    """A timm feature extractor, global pooling, dropout, one logit.

    Args:
        backbone: timm model name.
        dropout: Dropout before the final layer.
        in_chans: Input channels.
    """

    def __init__(self, backbone: str, dropout: float = 0.5, in_chans: int = 3) -> None:
        super().__init__()
        # pretrained=False always: weights are opt-in (see models/weights.py), never fetched implicitly.
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)
        self.backbone.hub_name = backbone  # what `pretrained: hub` downloads into it
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.num_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, S, S) -> pooled features (B, F) -> logits (B, 1)
        return self.head(self.backbone(x))


@register_model("xception", ModelConfig(
    299, paper="Chollet, Xception, CVPR 2017; Rössler et al., FaceForensics++, ICCV 2019"))
def xception(input_size: int = 299, dropout: float = 0.5) -> nn.Module:
    """The original Xception (timm's `legacy_xception`), as in the FaceForensics++ baseline."""
    del input_size  # fully convolutional with global pooling: any size of 32 px or more works
    return BackboneClassifier("legacy_xception", dropout)


@register_model("efficientnet", ModelConfig(224, paper="Tan and Le, EfficientNet, ICML 2019; DFDC winner (Seferbekov)"))
def efficientnet(input_size: int = 224, dropout: float = 0.4, variant: str = "efficientnet_b4") -> nn.Module:
    """EfficientNet-B4 (224 by default; the DFDC winner trained at 380, set `input_size: 380` for that)."""
    del input_size
    return BackboneClassifier(variant, dropout)
