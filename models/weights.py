"""Opt-in pretrained weights: a local file, or (with network) the backbone's ImageNet weights from the hub.

Nothing is downloaded unless `models.<key>.pretrained` asks for it; without it models train from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dfd.platform.errors import ConfigError

log = logging.getLogger(__name__)

HUB = "hub"  # `pretrained: hub`: timm downloads each backbone's ImageNet weights (needs network)
_HUB_FEATURES = {"legacy_xception": 2048}  # feature width of hub backbones we also build narrower


def _load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the tensors whose names and shapes match; report the rest (e.g. a classifier of another size)."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    log.info("loaded %d/%d tensors from %s; left at init: %s", len(usable), len(own), source, skipped[:8])


def load_hub(model: nn.Module) -> None:
    """Seed every timm backbone in `model` (modules tagged `hub_name`) with timm's pretrained weights."""
    import timm

    backbones = [m for m in model.modules() if getattr(m, "hub_name", None)]
    if not backbones:
        raise ConfigError(f"{type(model).__name__} has no hub backbone", "give a local weights file instead")
    for module in backbones:
        expected = _HUB_FEATURES.get(module.hub_name)
        if expected is not None and getattr(module, "num_features", expected) != expected:
            raise ConfigError(f"hub weights for '{module.hub_name}' exist only at the paper's width",
                              "set the model's `width` kwarg to 1.0, or train from scratch")
        in_chans = next(p for p in module.parameters() if p.dim() == 4).shape[1]
        try:
            # timm adapts the first convolution when in_chans differs (F3Net's 12- and 6-channel streams).
            ref = timm.create_model(module.hub_name, pretrained=True, num_classes=0, in_chans=in_chans)
        except Exception as exc:  # network, hub or cache errors all mean the same to the user
            raise ConfigError(f"could not fetch pretrained '{module.hub_name}' weights from the hub "
                              f"({type(exc).__name__}: offline?)",
                              "give a local weights file in models.<key>.pretrained, or remove it") from None
        _load_matching(module, ref.state_dict(), f"hub:{module.hub_name}")


def load_pretrained(model: nn.Module, source: str) -> None:
    """Load `source` into `model`: `hub`, or a local state dict / dfd checkpoint (loaded with weights_only=True).

    Keys whose shapes differ (a classifier with another number of classes) keep their initial values and are
    listed in the log, so that a backbone checkpoint can seed a detector.
    """
    if source == HUB:
        load_hub(model)
        return
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"pretrained weights not found: {path}", "give a local .pt/.pth file, `hub`, or remove it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    _load_matching(model, state, str(path))
