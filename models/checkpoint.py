"""Checkpoints carry the architecture name and its arguments, so `create_model` can rebuild them anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.registry import create_model


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects (`weights_only=True`)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def build_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the name and arguments stored in its checkpoint, with its weights, in eval mode."""
    model = create_model(ckpt["arch"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
