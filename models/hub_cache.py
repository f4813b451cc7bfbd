"""The local cache of ImageNet weights for `pretrained: hub`: what a model needs, what is missing, and filling it.

A cluster without network trains from ImageNet starts by reading this cache (`DFD_WEIGHTS_DIR`, default
`~/.cache/dfd/weights`): `dfd weights fetch` fills it on a machine with network (from the hub, or from a mirror URL
holding `<name>.pth`), and the folder is copied over. Each file is recorded with its sha256 in `manifest.json`, which
the training lineage quotes. timm's own caches (Hugging Face, torch hub) count as well when they hold the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfd.platform.errors import ConfigError

WEIGHTS_DIR_ENV = "DFD_WEIGHTS_DIR"
#: Hosts `pretrained: hub` downloads from (timm: the Hugging Face hub, else GitHub releases).
HUB_HOSTS = (("huggingface.co", 443), ("github.com", 443))


def cache_dir() -> Path:
    """Where fetched weights live: `$DFD_WEIGHTS_DIR`, else `~/.cache/dfd/weights`."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or Path.home() / ".cache" / "dfd" / "weights").expanduser()


def cached_file(name: str) -> Path | None:
    """The cached weights of timm model `name` in dfd's cache, or None."""
    path = cache_dir() / f"{name}.pth"
    return path if path.is_file() else None


def _in_timm_caches(name: str) -> bool:
    """Whether timm's own caches (Hugging Face hub, torch hub) already hold `name`'s default pretrained weights."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(cfg.hf_hub_id, filename), str):
                return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)).is_file()
    return False


def hub_names(model: nn.Module) -> list[str]:
    """The timm names of the hub backbones in `model` (modules tagged `hub_name`), each once, in order."""
    return list(dict.fromkeys(m.hub_name for m in model.modules() if getattr(m, "hub_name", None)))


def missing(names: list[str]) -> list[str]:
    """The names among `names` that no local cache holds."""
    return [n for n in names if cached_file(n) is None and not _in_timm_caches(n)]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a download could work now: not forced offline, and a hub host answers a TCP connection."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    for host, port in HUB_HOSTS:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return True
        except OSError:
            continue
    return False


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest() -> dict[str, Any]:
    """`manifest.json` of the cache: {name: {file, sha256, source}}; empty when absent or unreadable."""
    path = cache_dir() / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def fetch(names: list[str], mirror: str | None = None) -> dict[str, dict[str, str]]:
    """Download each of `names` into the cache (from `mirror/<name>.pth`, or the hub through timm).

    Returns:
        {name: {file, sha256, source}} of what was written (also merged into `manifest.json`).

    Raises:
        ConfigError: A download fails, or the file is not a loadable state dict; the cache keeps what it had.
    """
    import timm

    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, str]] = {}
    for name in names:
        target, tmp = out_dir / f"{name}.pth", out_dir / f".{name}.pth.part"
        source = f"{mirror.rstrip('/')}/{name}.pth" if mirror else f"hub:{name}"
        try:
            if mirror:
                torch.hub.download_url_to_file(source, str(tmp), progress=False)
                state = torch.load(tmp, map_location="cpu", weights_only=True)  # refuse a file that is not weights
                if not isinstance(state, dict) or not state:
                    raise ValueError("not a state dict")
            else:
                torch.save(timm.create_model(name, pretrained=True, num_classes=0).state_dict(), tmp)
        except Exception as exc:  # network, HTTP, hub or format errors all mean the same to the user
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"could not fetch weights '{name}' from {source} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})",
                              "check the network or the --mirror URL, then rerun `dfd weights fetch`") from None
        os.replace(tmp, target)
        done[name] = {"file": target.name, "sha256": sha256(target), "source": source}
    (out_dir / "manifest.json").write_text(json.dumps({**manifest(), **done}, indent=1, sort_keys=True))
    return done
