"""Opt-in pretrained weights: a local file, or (with network) the backbone's ImageNet weights from the hub.

Nothing is downloaded unless `models.<key>.pretrained` asks for it; without it models train from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfd.platform.errors import ConfigError

log = logging.getLogger(__name__)

HUB = "hub"  # `pretrained: hub`: timm downloads each backbone's ImageNet weights (needs network)
_HUB_FEATURES = {"legacy_xception": 2048}  # feature width of hub backbones we also build narrower
# Below this share of the model's parameters (by element count) loaded, "pretrained" would really mean "from
# scratch": a wrong file, or a model of another architecture or width. A new classifier head is a tiny share.
MIN_LOADED_SHARE = 0.5
_PREFIXES = ("module.", "model.", "_orig_mod.")  # DataParallel/DDP, Lightning and torch.compile wrappers


def _strip_prefixes(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix that every key carries when the model's own keys lack it."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                  min_share: float = MIN_LOADED_SHARE) -> dict[str, int | float]:
    """Load the tensors whose names and shapes match, and account for the rest.

    Returns:
        Counts: `matched` (loaded), `missing` (the model's tensors left at init), `unexpected` (in the file but not
        in the model), `shape_mismatch` (same name, other shape), and `loaded_share` of the model's elements.

    Raises:
        ConfigError: Less than `min_share` of the model's parameters would be loaded.
    """
    own = module.state_dict()
    state = _strip_prefixes({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, own)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    total = sum(v.numel() for v in own.values()) or 1
    counts: dict[str, int | float] = {
        "matched": len(usable), "missing": len(set(own) - set(usable)), "unexpected": len(set(state) - set(own)),
        "shape_mismatch": sum(1 for k, v in state.items() if k in own and own[k].shape != v.shape),
        "loaded_share": round(sum(v.numel() for v in usable.values()) / total, 4)}
    if counts["loaded_share"] < min_share:
        raise ConfigError(f"pretrained weights {source} match only {counts['loaded_share']:.0%} of "
                          f"{type(module).__name__}'s parameters ({counts['matched']} tensors matched, "
                          f"{counts['missing']} missing, {counts['unexpected']} unexpected, "
                          f"{counts['shape_mismatch']} of another shape; at least {min_share:.0%} needed)",
                          "give weights of this architecture and width, or remove models.<key>.pretrained")
    module.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    if counts["missing"] or counts["unexpected"]:
        log.warning("pretrained %s: %d tensors matched (%.0f%% of the parameters), %d missing (left at init: %s), "
                    "%d unexpected", source, counts["matched"], 100 * counts["loaded_share"], counts["missing"],
                    skipped[:8], counts["unexpected"])
    else:
        log.info("pretrained %s: all %d tensors matched", source, counts["matched"])
    return counts


def load_hub(model: nn.Module) -> list[dict[str, Any]]:
    """Seed every timm backbone in `model` (modules tagged `hub_name`) with timm's pretrained weights.

    Weights come from dfd's cache when it holds them (`dfd weights fetch`: models/hub_cache.py), else from timm
    (its caches, then the network). Returns each backbone's lineage: name, file, sha256 and the share loaded.
    """
    import timm

    from models.hub_cache import cached_file, manifest, sha256

    backbones = [m for m in model.modules() if getattr(m, "hub_name", None)]
    if not backbones:
        raise ConfigError(f"{type(model).__name__} has no hub backbone", "give a local weights file instead")
    lineage = []
    for module in backbones:
        expected = _HUB_FEATURES.get(module.hub_name)
        if expected is not None and getattr(module, "num_features", expected) != expected:
            raise ConfigError(f"hub weights for '{module.hub_name}' exist only at the paper's width",
                              "set the model's `width` kwarg to 1.0, or train from scratch")
        in_chans = next(p for p in module.parameters() if p.dim() == 4).shape[1]
        local = cached_file(module.hub_name)
        overlay = {"pretrained_cfg_overlay": {"file": str(local)}} if local else {}
        try:
            # timm adapts the first convolution when in_chans differs (F3Net's 12- and 6-channel streams).
            ref = timm.create_model(module.hub_name, pretrained=True, num_classes=0, in_chans=in_chans, **overlay)
        except Exception as exc:  # network, hub or cache errors all mean the same to the user
            raise ConfigError(f"could not fetch pretrained '{module.hub_name}' weights from the hub "
                              f"({type(exc).__name__}: offline?)",
                              "run `dfd weights fetch` where there is network and copy its cache here, give a "
                              "local weights file in models.<key>.pretrained, or remove it") from None
        counts = load_matching(module, ref.state_dict(), f"hub:{module.hub_name}")
        known = manifest().get(module.hub_name, {})
        digest = known.get("sha256") if local and known.get("file") == local.name else None
        lineage.append({"name": module.hub_name, "file": str(local) if local else "timm cache",
                        "sha256": digest or (sha256(local) if local else None),
                        "loaded_share": counts["loaded_share"]})
    return lineage


def load_pretrained(model: nn.Module, source: str) -> dict[str, Any]:
    """Load `source` into `model`: `hub`, or a local state dict / dfd checkpoint (loaded with weights_only=True).

    Keys whose shapes differ (a classifier with another number of classes) keep their initial values and are
    listed in the log, so that a backbone checkpoint can seed a detector.

    Returns:
        The lineage of what was loaded: `{"source": "hub", "weights": [{name, file, sha256, loaded_share}]}`, or
        a local file's path, sha256 and match counts.
    """
    if source == HUB:
        return {"source": HUB, "weights": load_hub(model)}
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"pretrained weights not found: {path}", "give a local .pt/.pth file, `hub`, or remove it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holds objects weights_only refuses
        raise ConfigError(f"cannot read pretrained weights {path} ({type(exc).__name__})",
                          "give a state dict saved with torch.save, or remove models.<key>.pretrained") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"pretrained weights {path} hold no state dict", "give a file saved from model.state_dict()")
    from models.hub_cache import sha256

    return {"source": str(path), "sha256": sha256(path), **load_matching(model, state, str(path))}
