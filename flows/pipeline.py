"""The pipeline flow: ingest -> faces -> train@M (in parallel) -> ensemble -> evaluate (gate) -> register.

It only wires: the work is in `tasks/`, the Prefect/MLflow binding in `flows/stages.py`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from dfd.data.provenance import git_commit, run_lineage
from dfd.platform.alerts import (
    alert,
    check_alert_settings,
    gate_failure_message,
    mlflow_run_link,
    params_alerts_fallback,
    run_failure_message,
)
from dfd.platform.config import OVERRIDE_ENV, AlertParams, Params, load_params
from dfd.platform.layout import Layout
from dfd.platform.storage_check import check_storage
from dfd.platform.tracking import Tracker
from flows.cancel import cancel_requested, end_cancelled, notify_cancelled, stop_children_on_termination
from flows.runners import train_all
from flows.stage_inputs import last_registration
from flows.stages import (
    ensemble_task,
    evaluate_task,
    faces_task,
    force_retrain,
    ingest_task,
    monitor_task,
    register_task,
)
from tasks.preflight import check_export, check_params, check_weights


@dataclass(frozen=True)
class PipelineSummary:
    """What a pipeline run produced, for the CLI to print."""

    run_id: str
    model_name: str
    version: str
    promoted: bool
    alias: str
    gate: dict[str, Any]
    metrics: dict[str, Any]
    tracking_uri: str
    # Alert channel -> "delivered" | "failed" | "off"; empty when nothing was sent (the gate passed).
    alerts: dict[str, str] = field(default_factory=dict)
    registered: bool = True  # False: nothing changed since the production version (`message` says which)
    message: str = ""
    unchanged: bool = False  # no stage had anything new to do: `version` is the one registered before
    monitor_status: str = ""  # the first step of the weekly run: ok | drift | too_few_records; "" when not run


log = logging.getLogger(__name__)

#: Prefect flow run id -> (tracking URI, experiment id, MLflow parent run id), for the failure hooks' links.
_MLFLOW_RUNS: dict[str, tuple[str, str, str]] = {}


def _files(path: str, overrides: list[str] | None, root: str) -> list[Path]:
    base = Path(root)  # absolute paths survive the join
    return [base / path, *(base / o for o in overrides or [])]


def _load(path: str, overrides: list[str] | None, root: str) -> Params:
    first, *rest = _files(path, overrides, root)
    return load_params(first, rest)


def _prefect_link(flow_run_id: str | None) -> str:
    from prefect.utilities.urls import url_for

    if not flow_run_id:
        return "not run by Prefect"
    try:
        return url_for("flow-run", obj_id=flow_run_id) or f"flow run id {flow_run_id} (no Prefect UI URL configured)"
    except Exception:  # a link is a courtesy; its absence must not stop the alert
        return f"flow run id {flow_run_id}"


def _hook_alert_params(parameters: dict[str, Any]) -> AlertParams:
    """The run's alert settings; when the params are what failed, their raw `alerts:` sections, else the env."""
    try:
        return _load(**parameters).alerts
    except Exception:  # the params may be exactly why the run failed
        files = _files(parameters.get("path", "params.yaml"), parameters.get("overrides"), parameters.get("root", "."))
        files += [Path(p) for p in os.environ.get(OVERRIDE_ENV, "").split(os.pathsep) if p]
        return params_alerts_fallback(files)


def _on_failure(flow_: Any, flow_run: Any, state: Any) -> None:
    """Alert on a failed or crashed run (a failed gate is a finished run: the flow body alerts on it).

    A run that crashed because it was cancelled (a Cancelling state in its history) is ended Cancelled instead,
    with no crash alert (flows/cancel.py).
    """
    try:
        cfg = _hook_alert_params(dict(flow_run.parameters))
        if state.is_crashed() and cancel_requested(str(flow_run.id)):
            end_cancelled(str(flow_run.id), "Flow run was cancelled.")
            _on_cancel(flow_, flow_run, state)
            return
        uri, exp, run = _MLFLOW_RUNS.pop(str(flow_run.id), ("", None, None))
        subject, body = run_failure_message(
            flow_run=flow_run.name, state=state.name, reason=state.message or state.type.value,
            mlflow_link=mlflow_run_link(uri, exp, run, cfg.mlflow_ui_url), prefect_link=_prefect_link(str(flow_run.id)))
        delivered = alert(cfg, subject, body)
        log.warning("flow run %s %s; alerts: %s", flow_run.name, state.name, delivered)
    except Exception as exc:  # a hook must never raise nor replace the run's own failure
        log.error("failure alert for flow run %s not sent: %s", flow_run.name, type(exc).__name__)


def _on_cancel(flow: Any, flow_run: Any, state: Any) -> None:
    """A cancelled run: no crash alert; a `cancelled` notice only with `alerts.on_cancel: true`.

    Prefect's runner calls cancellation hooks with keywords (`flow=`, `flow_run=`, `state=`): keep these names.
    """
    try:
        _MLFLOW_RUNS.pop(str(flow_run.id), None)
        sent = notify_cancelled(_hook_alert_params(dict(flow_run.parameters)), flow_run)
        log.warning("flow run %s cancelled%s", flow_run.name, f"; notice: {sent}" if sent else "")
    except Exception as exc:  # a hook must never raise
        log.error("cancel notice for flow run %s not sent: %s", flow_run.name, type(exc).__name__)


def run_pipeline(params: Params, root: Path, monitor: bool = False) -> PipelineSummary:
    """The DAG on already-loaded params; the body of the Prefect flow (`monitor`: the served traffic first)."""
    check_storage(params, root)  # before any stage: an unreachable bucket fails here, in seconds
    layout = Layout.from_params(params, root)
    tracker = Tracker.from_params(params, root)
    provenance = {"git_commit": git_commit(root), "params_hash": params.digest()}
    flow_run_id = current_flow_run.id
    before = last_registration(layout)  # the run that registered the current version, if any
    with tracker.run("pipeline", tags=provenance) as parent:
        if flow_run_id:
            _MLFLOW_RUNS[flow_run_id] = (tracker.tracking_uri, tracker.experiment_id, parent)
            tracker.set_tags(parent, {"prefect_flow_run_id": flow_run_id})
        tracker.log_params(parent, params.model_dump(mode="json"))
        watched = monitor_task(params, layout, tracker, parent) if monitor else None
        ingest_task(params, layout, tracker, parent)
        tracker.set_tags(parent, run_lineage(params, layout.ingest_report, root))
        faces_task(params, layout, tracker, parent)
        # The four detectors train in parallel on the runner params choose (threads, Dask, Ray); each is its own
        # task with its own nested run and retries, and its own GPU (flows/runners.py).
        trigger = None
        if watched is not None and watched.drifted and params.monitor.retrain_on_drift:
            trigger = f"drift in served traffic (monitor run {watched.run_id})"
            print(f"monitor.retrain_on_drift: retraining although the data did not change: {watched.message}")
            force_retrain(params, layout)
        train_all(params, layout, tracker, parent)
        ensemble_task(params, layout, tracker, parent)
        ev = evaluate_task(params, layout, tracker, parent)
        reg = register_task(params, layout, tracker, parent, trigger)
        gate = reg.gate  # the gate dict (format D), decided by the register stage
        tracker.log_metrics(parent, {"test": ev.metrics["ensemble"], "gate_passed": int(reg.passed)})
        tracker.set_tags(parent, {"gate_passed": reg.passed, "model_version": reg.version})
        unchanged = before is not None and before == reg.run_id
        if unchanged:
            print(f"nothing changed since version {reg.version}")
            tracker.set_tags(parent, {"unchanged": "true", "note": f"nothing changed since version {reg.version}"})
        alerts: dict[str, str] = {}
        if not reg.passed and not unchanged:  # a failed gate is reported once, not again every week it stays
            subject, body = gate_failure_message(
                gate, flow_run=current_flow_run.name or parent, model_name=reg.model_name, version=reg.version,
                mlflow_link=mlflow_run_link(tracker.tracking_uri, tracker.experiment_id, parent,
                                            params.alerts.mlflow_ui_url),
                prefect_link=_prefect_link(flow_run_id))
            alerts = dict(alert(params.alerts, subject, body))
            tracker.set_tags(parent, {f"alert_{k}": v for k, v in alerts.items()})
    _MLFLOW_RUNS.pop(flow_run_id or "", None)
    return PipelineSummary(parent, reg.model_name, reg.version, reg.promoted, reg.alias, gate,
                           ev.metrics["ensemble"], tracker.tracking_uri, alerts, reg.registered, reg.message,
                           unchanged, watched.status if watched else "")


@flow(name="deepfake-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=4), on_failure=[_on_failure],
      on_crashed=[_on_failure], on_cancellation=[_on_cancel], log_prints=True)
def pipeline(path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
             monitor: bool = False) -> PipelineSummary:
    """Train, evaluate and register the deepfake ensemble.

    Args:
        path: The params file.
        overrides: Files merged on top of it (e.g. configs/demo.yaml).
        root: Project root that relative paths in params are resolved against.
        monitor: Judge the served traffic first (`dfd monitor`); the weekly deployment sets it.
    """
    params = _load(path, overrides, root)
    check_alert_settings(params.alerts)  # a scheduled run has no CLI preflight: bad alert settings stop it here
    check_params(params)  # every name and device, before any work (deployments start here, not from the CLI)
    check_weights(params)  # ImageNet starts (`pretrained: hub`) missing offline: one line before any stage
    check_export(params)  # ensemble.export on without its packages (the onnx extra): one line, before training
    # SIGTERM (a cancel, `docker stop`, Ctrl-C) stops the training children at once, not after they finish
    # training; Prefect's SIGTERM handler stays installed, or a cancel from the UI would end the run Crashed.
    with stop_children_on_termination():
        return run_pipeline(params, Path(root).resolve(), monitor)
