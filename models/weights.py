"""Opt-in pretrained weights from a local file; nothing is downloaded at run time."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dfd.errors import ConfigError

log = logging.getLogger(__name__)


def load_pretrained(model: nn.Module, path: Path) -> None:
    """Load a state dict (or a dfd checkpoint) from `path` into `model`, matching keys by name and shape.

    Keys whose shapes differ (a classifier with another number of classes) are left at their initial values and
    listed in the log, so that a backbone checkpoint can seed a detector.
    """
    if not path.is_file():
        raise ConfigError(f"pretrained weights not found: {path}", "give a local .pt/.pth file, or remove `pretrained`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    log.info("loaded %d/%d tensors from %s; left at init: %s", len(usable), len(own), path, skipped[:8])
