"""Thin Prefect tasks around the stage functions: a nested MLflow run each, params, metrics and artifacts.

The stage functions in `tasks/` know nothing of Prefect or MLflow; this module is the only place that binds them.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from dfd.platform.config import Params
from dfd.platform.errors import DfdError
from dfd.platform.layout import Layout
from dfd.platform.tracking import Tracker
from flows.train_process import train_in_process
from tasks import ensemble, evaluate, faces, ingest, register, train


def _transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may succeed next time: not our own errors (bad data, bad params, divergence)."""
    try:
        state.result()
    except DfdError:
        return False
    except Exception:  # anything else may be transient: I/O, a busy store, a lost device
        return True
    return False


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> ingest.IngestResult:
    with tracker.run("ingest", parent) as rid:
        tracker.log_params(rid, {"data": params.data.model_dump(), "ingest": params.ingest.model_dump()})
        res = ingest.run(params, layout)
        tracker.log_metrics(rid, {"samples": res.samples, "bad": res.bad})
        tracker.log_artifact(rid, res.report)
        tracker.log_dataset(rid, res.manifest, params.data.name, res.data_hash, str(layout.resolve(params.data.root)))
        return res


@task(name="faces", cache_policy=NO_CACHE, retries=1, retry_condition_fn=_transient)
def faces_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> faces.FacesResult:
    with tracker.run("faces", parent) as rid:
        tracker.log_params(rid, params.faces.model_dump())
        res = faces.run(params, layout)
        tracker.log_metrics(rid, {"crops": res.crops, "samples_without_face": res.samples_without_face,
                                  "extracted": res.extracted, "skipped": res.skipped})
        tracker.log_artifact(rid, res.report)
        return res


@task(name="train", task_run_name="train@{model}", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=_transient)
def train_task(params: Params, layout: Layout, tracker: Tracker, parent: str, model: str,
               gpu: int | None = None) -> train.TrainResult:
    # Each model trains in its own process (flows/train_process.py says why); a retry resumes from last.pt, so a
    # crashed or killed child costs at most one epoch.
    with tracker.run(f"train@{model}", parent, {"model": model}) as rid:
        tracker.log_params(rid, {"model": params.models[model].model_dump(), "train": params.train.model_dump()})
        with tracker.system_metrics(rid):
            res = train_in_process(params, layout, model, lambda epoch, m: tracker.log_metrics(rid, m, step=epoch),
                                   gpu)
        summary = res.summary
        tracker.log_metrics(rid, {"best_val_auc": summary["best_val_auc"], "parameters": summary["parameters"],
                                  "val": summary["val"], "test": summary.get("test", {})})
        for path in (res.metrics, res.predictions, res.best):
            tracker.log_artifact(rid, path)
        return res


@task(name="ensemble", cache_policy=NO_CACHE)
def ensemble_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> ensemble.EnsembleResult:
    with tracker.run("ensemble", parent) as rid:
        tracker.log_params(rid, params.ensemble.model_dump())

        def on_trial(number: int, weights: dict[str, float], value: dict[str, float]) -> None:
            # One nested run per Optuna trial (MLflowCallback is deprecated).
            with tracker.run(f"trial-{number:03d}", rid) as tid:
                tracker.log_params(tid, {f"w_{k}": round(v, 6) for k, v in weights.items()})
                tracker.log_metrics(tid, value)

        res = ensemble.run(params, layout, on_trial)
        tracker.log_metrics(rid, {"val": res.val_metrics, "weight": res.weights, "cv": res.cv})
        tracker.log_artifact(rid, res.spec)
        return res


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> evaluate.EvaluateResult:
    with tracker.run("evaluate", parent) as rid:
        tracker.log_params(rid, params.evaluate.model_dump())
        res = evaluate.run(params, layout)
        tracker.log_metrics(rid, {"test": res.metrics["ensemble"], "members": res.metrics["members"],
                                  "robustness_auc": res.metrics["robustness"],
                                  "adversarial_auc": res.metrics.get("adversarial", {}),
                                  "cross_dataset": res.metrics.get("cross_dataset", {}),
                                  "drifted_share": res.metrics.get("drift", {}).get("drifted_share")})
        tracker.log_artifact(rid, res.reports_dir, "reports")
        return res


@task(name="register", cache_policy=NO_CACHE, retries=1, retry_condition_fn=_transient)
def register_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> register.RegisterResult:
    from prefect.runtime import flow_run  # the flow run id goes on the model version as lineage

    return register.run(params, layout, tracker, parent, flow_run.id)
