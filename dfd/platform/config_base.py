"""The base of every params section: frozen, unknown keys rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    """Base of every section: frozen, and unknown keys are errors rather than silently ignored typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)
