"""Xception and EfficientNet-B4 with a deepfake head (the FaceForensics++ and DFDC baselines)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from models.registry import ModelConfig, register_model
from models.xception_net import Xception


class BackboneClassifier(nn.Module):
    """A pooled feature extractor, dropout, one logit.

    Args:
        backbone: A timm model name, or a module that returns pooled features and has `num_features`.
        dropout: Dropout before the final layer.
    """

    def __init__(self, backbone: str | nn.Module, dropout: float = 0.5) -> None:
        super().__init__()
        if isinstance(backbone, str):
            # pretrained=False always: weights are opt-in (see models/weights.py), never fetched implicitly.
            name, backbone = backbone, timm.create_model(backbone, pretrained=False, num_classes=0)
            backbone.hub_name = name  # what `pretrained: hub` downloads into it
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, S, S) -> pooled features (B, F) -> logits (B, 1)
        return self.head(self.backbone(x))


@register_model("xception", ModelConfig(
    299, paper="Chollet, Xception, CVPR 2017; Rössler et al., FaceForensics++, ICCV 2019"))
def xception(input_size: int = 299, dropout: float = 0.5, width: float = 1.0) -> nn.Module:
    """The original Xception (timm's `legacy_xception` at width 1), as in the FaceForensics++ baseline."""
    del input_size  # fully convolutional with global pooling: any size of 32 px or more works
    return BackboneClassifier(Xception(3, width), dropout)


@register_model("efficientnet", ModelConfig(224, paper="Tan and Le, EfficientNet, ICML 2019; DFDC winner (Seferbekov)"))
def efficientnet(input_size: int = 224, dropout: float = 0.4, variant: str = "efficientnet_b4") -> nn.Module:
    """EfficientNet-B4 (224 by default; the DFDC winner trained at 380, set `input_size: 380` for that).

    `variant` picks another timm EfficientNet (e.g. `efficientnet_b7`; tests use timm's tiny `test_efficientnet`).
    """
    del input_size
    return BackboneClassifier(variant, dropout)
