"""Helpers shared by tests: paths and the tiny params."""

from __future__ import annotations

from pathlib import Path

import yaml

from dfd.config import Params, load_params

PROJECT = Path(__file__).resolve().parent.parent
TINY = PROJECT / "tests" / "params.tiny.yaml"
SHARED_DATA = PROJECT.parent / "shared" / "data"


def tiny_params(root: Path, **sections: dict) -> Params:
    """params.yaml + tests/params.tiny.yaml, with the dataset under `root` and optional extra overrides."""
    extra = root / "extra.yaml"
    data = {"data": {"root": str(root / "raw")}, **sections}
    extra.write_text(yaml.safe_dump(data))
    return load_params(PROJECT / "params.yaml", [TINY, extra])
