"""`POST /predict?explain=1`: the `dfd predict --report` content as JSON, one request at a time.

The explain job runs where every scoring runs (a worker process, or a thread with `serve.isolation: thread`): it
scores the upload as `/predict` does, then builds the report's content with `dfd.serving.report.content`, the
function the HTML report renders, so the answer and a `--report` page carry the same facts. Heatmaps need a
differentiable copy of the members (`dfd.serving.heatmaps.Explainer`): built on a worker's first explain request
and kept beside its model.

`ExplainGate` lets one explain request in at a time, server-wide; a second one is answered 503 with Retry-After
before its body is read (the server's capacity, not the client's rate: 429 is the per-client rate limit's answer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfd.platform.config import ReportParams, ServeParams

# The explainer of the model a worker (or the server, with threads) explained last: (model, explainer). One model
# at a time: a worker holds one model, and the next version replaces it.
_cached: list[tuple[Any, Any]] = []


def faces_allowed(cfg: ServeParams, report: ReportParams) -> bool:
    """Face crops and overlays in an explain answer: `serve.explain_faces` and `report.embed_faces` both on."""
    return cfg.explain_faces and report.embed_faces


def _explainer(model: Any) -> Any:
    from dfd.serving.heatmaps import Explainer

    if not _cached or _cached[0][0] is not model:
        _cached.clear()  # the old model's copy goes before the new one is built: one copy in memory
        py = model.python_model
        _cached.append((model, Explainer(py.spec, py.checkpoints)))
    return _cached[0][1]


def model_label(model: Any) -> str:
    """What an answer calls the model: its registry version (never a server folder's path), and how it runs."""
    label = (f"models:/{model.name}/{model.version}" if model.name and model.version
             else "a model folder without a registry identity")
    if model.precision != "fp32" or model.engine != "torch":
        label += (f", {model.engine} {model.precision}: P(fake) within {model.precision_error:.4f} of torch fp32 on "
                  "the example crops (heatmaps are torch fp32's)")
    return label


def explain_upload(model: Any, check: Callable[[], None], path: Path, name: str, aggregate: str | None,
                   cfg: ServeParams, report: ReportParams) -> tuple[Any, dict[str, Any]]:
    """One uploaded file scored as `/predict` scores it, and its report content (a worker job).

    Returns:
        The `MediaResult` (for the traffic log) and the report's content, JSON-ready.
    """
    from dfd.serving.report import content, model_facts

    res = model.python_model.scorer.score_upload(path, name, aggregate, check, cfg)
    embed = faces_allowed(cfg, report)
    explainer = _explainer(model) if embed and report.heatmap_frames and res.p_fake is not None else None
    facts = model_facts(model, model_label(model), model.python_model.scorer.threshold)
    return res, content(res, path, facts, explainer, embed, cfg.log_names, 0, report.heatmap_frames, check)


@dataclass
class Ticket:
    """One admitted explain request; `release` (idempotent) lets the next one in."""

    gate: ExplainGate
    deadline: float  # monotonic time by which it has certainly ended (or been killed)
    open: bool = True
    handed: bool = False  # its release belongs to the scoring slot (threads: released once the scoring stops)

    def release(self) -> None:
        if self.open:
            self.open = False
            self.gate.ticket = None

    def hand_over(self) -> Callable[[], None]:
        """`release`, for a scoring slot to call once its scoring has stopped; the request no longer releases it."""
        self.handed = True
        return self.release


class ExplainGate:
    """At most one explain request at a time, in the server's event loop (no locks: one thread touches it).

    Args:
        cfg: `serve:` params: a request holds the gate at most while its upload is received
            (`request_timeout_s`), while it waits for a slot (`slot_wait_s`) and while it is explained
            (`explain_timeout_s`): the Retry-After a refused request gets is what is left of that.
    """

    def __init__(self, cfg: ServeParams) -> None:
        self.longest_s = cfg.request_timeout_s + cfg.slot_wait_s + cfg.explain_timeout_s
        self.ticket: Ticket | None = None

    def enter(self) -> Ticket | None:
        """A ticket, or None while another explain request holds the gate."""
        if self.ticket is not None:
            return None
        self.ticket = Ticket(self, time.monotonic() + self.longest_s)
        return self.ticket

    def retry_after_s(self) -> int:
        """Whole seconds until the request holding the gate has certainly ended (at least 1)."""
        left = self.ticket.deadline - time.monotonic() if self.ticket is not None else 0.0
        return max(1, math.ceil(left))
