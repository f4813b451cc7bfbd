"""Cancellations that are cancellations: a run cancelled from the UI or `prefect flow-run cancel` ends Cancelled.

Prefect's worker tells the flow process over its control channel that the coming SIGTERM is a cancel, and the
engine then ends the run Cancelled instead of Crashed, but only while Prefect's own SIGTERM handler is installed
(the child refuses the cancel otherwise). So the flow never replaces that handler: the training children are
stopped as the termination unwinds the flow body (`stop_children_on_termination`, around the wait for the training
tasks, inside their task runner: its exit would otherwise wait for children that train to the end).

When a cancel still arrives as a crash (before the control channel is up, or without a worker), the crash hook asks
the server whether the run had been asked to cancel (a Cancelling state in its history) and, if so, ends it
Cancelled and sends no crash alert. A `cancelled` notice goes out only with `alerts.on_cancel: true`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from dfd.platform.alerts import alert
from dfd.platform.config import AlertParams
from dfd.platform.interrupts import interrupt_signal

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_children_on_termination() -> Iterator[None]:
    """Stop the training children at once when a signal unwinds the body (before the engine waits on its tasks)."""
    try:
        yield
    except BaseException as exc:
        if interrupt_signal(exc) is not None:
            from flows.train_process import stop_all_children

            stop_all_children()
        raise


def cancel_requested(flow_run_id: str) -> bool:
    """Whether the server's history of this run holds a Cancelling or Cancelled state (someone asked to cancel)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            states = client.read_flow_run_states(flow_run_id)
    except Exception as exc:  # no server to ask: the crash stays a crash
        log.warning("could not read the states of flow run %s: %s", flow_run_id, type(exc).__name__)
        return False
    return any(s.type.value in ("CANCELLING", "CANCELLED") for s in states)


def end_cancelled(flow_run_id: str, message: str) -> None:
    """Force the run's final state to Cancelled (it was reported Crashed by a cancel's SIGTERM)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)


def notify_cancelled(cfg: AlertParams, flow_run: Any) -> dict[str, str]:
    """The `cancelled` notice, only when `alerts.on_cancel` asks for it; {} otherwise."""
    if not cfg.on_cancel:
        return {}
    subject = f"[dfd] pipeline run {flow_run.name} cancelled"
    body = (f"Flow run {flow_run.name} ({flow_run.id}) was cancelled; finished stages are kept and the next run "
            "resumes from them.\n")
    return dict(alert(cfg, subject, body))
