"""Model registry by name, after timm's `register_model` / `create_model`.

Adding an architecture is one file with a `@register_model(...)` factory and one import in `models/__init__.py`;
the model tests pick it up through `list_models()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from dfd.platform.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelConfig:
    """Preprocessing a model expects: the training and serving code read it instead of if-chains.

    Attributes:
        input_size: Square input side in pixels, as the paper uses it.
        mean: Per-channel mean (RGB, 0..1 scale) subtracted before the network.
        std: Per-channel std the input is divided by.
        paper: Where the architecture comes from.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    paper: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def preprocessing(self) -> dict[str, Any]:
        """What `build_transform` needs (input size, mean, std) as plain values: dfd's training knows no models."""
        return {"input_size": self.input_size, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    config: ModelConfig


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, config: ModelConfig) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory `f(input_size=..., **kwargs) -> nn.Module` under `name`.

    Args:
        name: The registry name used in params (`models.<key>.arch`).
        config: The model's preprocessing defaults.
    """

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = _Entry(factory, config)
        return factory

    return deco


def list_models() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model architecture '{name}'", f"choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The registered factory of `name` (its signature says which `kwargs` it accepts)."""
    return _entry(name).factory


def model_config(name: str, input_size: int | None = None) -> ModelConfig:
    """The registered preprocessing config of `name`, with `input_size` overridden when given."""
    cfg = _entry(name).config
    if input_size is not None:
        cfg = ModelConfig(input_size, cfg.mean, cfg.std, cfg.paper)
    return cfg


def create_model(name: str, input_size: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model that outputs one logit per image (fake = positive).

    Args:
        name: Registry name.
        input_size: Input side; defaults to the registered size.
        **kwargs: Extra constructor arguments of the architecture.
    """
    entry = _entry(name)
    size = input_size or entry.config.input_size
    return entry.factory(input_size=size, **kwargs)
