"""Detector architectures, registered by name; import a module here to register its models."""

from models import f3net, mesonet, timm_backbones  # noqa: F401  (imported for their registrations)
from models.registry import ModelConfig, create_model, list_models, model_config, register_model

__all__ = ["ModelConfig", "create_model", "list_models", "model_config", "register_model"]
