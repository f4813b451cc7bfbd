"""The `recipes` stage: what each model's training reads from params, one JSON file per model, for DVC.

DVC decides a rerun by the params a stage declares, and cannot apply a model's recipe over `train:`: declaring the
whole `train:` section would retrain sbi when `train.augment` changes, although sbi's recipe sets its own. So this
cheap stage (params: train, models) writes `<artifacts>/recipes/<model>.json`, and each `train@<model>` depends on
its own file: a file whose content did not change leaves its training alone.
"""

from __future__ import annotations

from pathlib import Path

from dfd.platform.config import Params
from dfd.platform.files import write_json
from dfd.platform.layout import Layout
from dfd.platform.recipe_config import train_inputs


def recipe_path(layout: Layout, model: str) -> Path:
    return layout.artifacts / "recipes" / f"{model}.json"


def run(params: Params, layout: Layout) -> list[Path]:
    """Write every model's training inputs; a model no longer in params loses its file. Returns the paths."""
    folder = layout.artifacts / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        if old.stem not in params.models:
            old.unlink()
    return [write_json(recipe_path(layout, m), train_inputs(params.train, spec)) for m, spec in params.models.items()]
