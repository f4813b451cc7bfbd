"""The pipeline flow: ingest -> faces -> train@M (in parallel) -> ensemble -> evaluate (gate) -> register.

It only wires: the work is in `tasks/`, the Prefect/MLflow binding in `flows/stages.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from dfd.data.provenance import git_commit, run_lineage
from dfd.platform.alerts import alert, gate_failure_message
from dfd.platform.config import Params, load_params
from dfd.platform.layout import Layout
from dfd.platform.tracking import Tracker
from flows.stages import ensemble_task, evaluate_task, faces_task, ingest_task, register_task, train_task
from flows.train_process import stop_children_on_sigterm
from tasks.preflight import check_params


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


def _load(path: str, overrides: list[str] | None, root: str) -> Params:
    base = Path(root)
    return load_params(base / path, [base / o for o in overrides or []])  # absolute paths survive the join


def _on_failure(flow_: Any, flow_run: Any, state: Any) -> None:
    """Alert on a crashed run (a failed gate is a finished run and alerts from the flow body)."""
    try:
        params = _load(**flow_run.parameters)
    except Exception:  # a hook must never raise; the params may be why the run failed
        return
    alert(params.alerts, f"[dfd] pipeline run {flow_run.name} failed", f"{state.message}\n")


def run_pipeline(params: Params, root: Path) -> PipelineSummary:
    """The DAG on already-loaded params; the body of the Prefect flow."""
    layout = Layout.from_params(params, root)
    tracker = Tracker.from_params(params, root)
    provenance = {"git_commit": git_commit(root), "params_hash": params.digest()}
    with tracker.run("pipeline", tags=provenance) as parent:
        tracker.log_params(parent, params.model_dump(mode="json"))
        ingest_task(params, layout, tracker, parent)
        tracker.set_tags(parent, run_lineage(params, layout.ingest_report, root))
        faces_task(params, layout, tracker, parent)
        # The four detectors train in parallel; each is its own task with its own nested run and retries, and
        # on a multi-GPU machine its own GPU (round robin).
        gpus = torch.cuda.device_count()
        futures = [train_task.submit(params, layout, tracker, parent, m, i % gpus if gpus > 1 else None)
                   for i, m in enumerate(params.models)]
        for fut in futures:
            fut.result()
        ensemble_task(params, layout, tracker, parent)
        ev = evaluate_task(params, layout, tracker, parent)
        reg = register_task(params, layout, tracker, parent)
        tracker.log_metrics(parent, {"test": ev.metrics["ensemble"], "gate_passed": int(ev.passed)})
        tracker.set_tags(parent, {"gate_passed": ev.passed, "model_version": reg.version})
        if not ev.passed:
            subject, body = gate_failure_message(ev.gate, reg.model_name, reg.version, parent)
            tracker.set_tags(parent, {"alerts": alert(params.alerts, subject, body)})
    return PipelineSummary(parent, reg.model_name, reg.version, reg.promoted, reg.alias, ev.gate,
                           ev.metrics["ensemble"], tracker.tracking_uri)


@flow(name="deepfake-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=4), on_failure=[_on_failure],
      log_prints=True)
def pipeline(path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".") -> PipelineSummary:
    """Train, evaluate and register the deepfake ensemble.

    Args:
        path: The params file.
        overrides: Files merged on top of it (e.g. configs/demo.yaml).
        root: Project root that relative paths in params are resolved against.
    """
    params = _load(path, overrides, root)
    check_params(params)  # every name and device, before any work (deployments start here, not from the CLI)
    stop_children_on_sigterm()  # SIGTERM stops the training children at once, not after they finish training
    return run_pipeline(params, Path(root).resolve())
