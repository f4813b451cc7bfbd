"""The per-model training recipe: the `train:` fields a `models.<key>` entry may set for itself, and `train_on`.

Kept apart from `dfd/platform/config.py` (which re-exports it) so that the schema's main module stays one screenful
per stage; `ModelParams` inherits these fields, so unknown keys are refused the same way.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import Field

from dfd.platform.config_base import _Section

#: Fields of a model's params that override the same-named `train:` field (`lr` and `batch_size` live on
#: `ModelParams` itself, from before recipes).
RECIPE_KEYS = ("lr", "batch_size", "epochs", "optimizer", "weight_decay", "scheduler", "warmup_epochs", "augment",
               "sbi_prob", "cutout_prob", "batch_augment", "balanced_sampling", "grad_accum_steps",
               "early_stop_patience", "max_steps_per_epoch", "sam_rho")

T = TypeVar("T", bound=_Section)


class TrainRecipe(_Section):
    """A model's own training recipe: each field left None takes the value under `train:` (see `recipe`)."""

    # all: real and fake crops as labelled; real_only: real crops only, the positives made on the fly by SBI (its
    # paper trains on reals alone), so a team with far more real footage than labelled fakes can still train.
    train_on: Literal["all", "real_only"] = "all"
    epochs: int | None = Field(None, ge=1)
    optimizer: Literal["adamw", "adam", "sgd", "sam"] | None = None
    weight_decay: float | None = Field(None, ge=0)
    scheduler: Literal["cosine", "step", "plateau", "none"] | None = None
    warmup_epochs: float | None = Field(None, ge=0)
    augment: list[str] | None = None
    sbi_prob: float | None = Field(None, ge=0, le=1)
    cutout_prob: float | None = Field(None, ge=0, le=1)
    batch_augment: list[str] | None = None
    balanced_sampling: bool | None = None
    grad_accum_steps: int | None = Field(None, ge=1)
    early_stop_patience: int | None = Field(None, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    sam_rho: float | None = Field(None, gt=0)


def recipe(cfg: T, spec: Any) -> T:
    """The training params of one model: `cfg` (the `train:` section) with the recipe fields `spec` sets laid over it,
    validated again. A real-only model always has `sbi` among its augmentations: SBI makes its only positives."""
    over = {k: getattr(spec, k) for k in RECIPE_KEYS if getattr(spec, k, None) is not None}
    if getattr(spec, "train_on", "all") == "real_only" and "sbi" not in (over.get("augment") or cfg.augment):
        over["augment"] = [*(over.get("augment") or cfg.augment), "sbi"]
    return type(cfg).model_validate({**cfg.model_dump(), **over}) if over else cfg


def train_inputs(cfg: _Section, spec: Any) -> dict[str, Any]:
    """What a model's training reads from params: its own entry, and `train:` under its recipe (JSON-able).

    A `train:` field its recipe sets is hidden, so changing it reruns only the models that take it from `train:`;
    the flow's stage cache (flows/stage_inputs.py) and DVC (the `recipes` stage's files) both decide reruns by it.
    """
    return {"train": recipe(cfg, spec).model_dump(mode="json"), "model": spec.model_dump(mode="json")}
