"""Thin Prefect tasks around the stage functions: a nested MLflow run each, params, metrics and artifacts.

The stage functions in `tasks/` know nothing of Prefect or MLflow; this module is the only place that binds them.
Each task first fingerprints its stage's inputs (`flows/stage_inputs.py`): when they are what they were when its
outputs were written, it returns the recorded result without running, and says so on the console and its MLflow run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from dfd.platform.config import Params, recipe
from dfd.platform.errors import DfdError
from dfd.platform.layout import Layout
from dfd.platform.stage_cache import Check, StageCache, StageInputs, describe, run_cached
from dfd.platform.tracking import Tracker
from flows import stage_inputs
from flows.train_process import train_in_process
from tasks import ensemble, evaluate, faces, ingest, monitor, register, train

R = TypeVar("R")


def _cached(layout: Layout, tracker: Tracker, rid: str, inputs: StageInputs, cls: type[R],
            compute: Callable[[], R]) -> R:
    """Run `compute` unless the stage is up to date; record the result for the next run when it ran."""

    def announce(check: Check) -> None:
        print(describe(check))
        tracker.set_tags(rid, {"up_to_date": str(check.up_to_date).lower(), "stage_fingerprint": check.fingerprint})
        if check.up_to_date:
            tracker.set_tags(rid, {"reused_from_run": str(check.record.get("run_id")),
                                   "reused_since": check.record.get("finished_at", "?")})
        else:
            tracker.set_tags(rid, {"rerun_reason": check.reason[:4000]})

    return run_cached(StageCache(layout.artifacts, layout.root), inputs, cls, compute, announce, rid)[0]


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

        def compute() -> ingest.IngestResult:
            res = ingest.run(params, layout)
            tracker.log_metrics(rid, {"samples": res.samples, "bad": res.bad})
            tracker.log_artifact(rid, res.report)
            tracker.log_dataset(rid, res.manifest, params.data.name, res.data_hash,
                                str(layout.resolve(params.data.root)))
            return res

        return _cached(layout, tracker, rid, stage_inputs.ingest(params, layout), ingest.IngestResult, compute)


@task(name="faces", cache_policy=NO_CACHE, retries=1, retry_condition_fn=_transient)
def faces_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> faces.FacesResult:
    with tracker.run("faces", parent) as rid:
        tracker.log_params(rid, params.faces.model_dump())

        def compute() -> faces.FacesResult:
            res = faces.run(params, layout)
            tracker.log_metrics(rid, {"crops": res.crops, "samples_without_face": res.samples_without_face,
                                      "extracted": res.extracted, "skipped": res.skipped})
            tracker.log_artifact(rid, res.report)
            return res

        return _cached(layout, tracker, rid, stage_inputs.faces(params, layout), faces.FacesResult, compute)


@task(name="train", task_run_name="train@{model}", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=_transient)
def train_task(params: Params, layout: Layout, tracker: Tracker, parent: str, model: str,
               gpu: int | None = None, threads: int | None = None) -> train.TrainResult:
    # Each model trains in its own process (flows/train_process.py says why); a retry resumes from last.pt, so a
    # crashed or killed child costs at most one epoch.
    with tracker.run(f"train@{model}", parent, {"model": model}) as rid:
        tracker.log_params(rid, {"model": params.models[model].model_dump(),
                                 "train": recipe(params.train, params.models[model]).model_dump()})

        def compute() -> train.TrainResult:
            with tracker.system_metrics(rid):
                res = train_in_process(params, layout, model,
                                       lambda epoch, m: tracker.log_metrics(rid, m, step=epoch), gpu,
                                       threads=threads)
            summary = res.summary
            tracker.log_metrics(rid, {"best_val_auc": summary["best_val_auc"], "parameters": summary["parameters"],
                                      "val": summary["val"], "test": summary.get("test", {})})
            for path in (res.metrics, res.predictions, res.best):
                tracker.log_artifact(rid, path)
            return res

        return _cached(layout, tracker, rid, stage_inputs.train(params, layout, model), train.TrainResult, compute)


@task(name="ensemble", cache_policy=NO_CACHE)
def ensemble_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> ensemble.EnsembleResult:
    with tracker.run("ensemble", parent) as rid:
        tracker.log_params(rid, params.ensemble.model_dump())

        def on_trial(number: int, weights: dict[str, float], value: dict[str, float]) -> None:
            # One nested run per Optuna trial (MLflowCallback is deprecated).
            with tracker.run(f"trial-{number:03d}", rid) as tid:
                tracker.log_params(tid, {f"w_{k}": round(v, 6) for k, v in weights.items()})
                tracker.log_metrics(tid, value)

        def compute() -> ensemble.EnsembleResult:
            res = ensemble.run(params, layout, on_trial)
            tracker.log_metrics(rid, {"val": res.val_metrics, "weight": res.weights, "cv": res.cv})
            tracker.log_artifact(rid, res.spec)
            return res

        return _cached(layout, tracker, rid, stage_inputs.ensemble(params, layout), ensemble.EnsembleResult,
                       compute)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> evaluate.EvaluateResult:
    with tracker.run("evaluate", parent) as rid:
        tracker.log_params(rid, params.evaluate.model_dump())

        def compute() -> evaluate.EvaluateResult:
            res = evaluate.run(params, layout)
            tracker.log_metrics(rid, {"test": res.metrics["ensemble"], "members": res.metrics["members"],
                                      "robustness_auc": res.metrics["robustness"],
                                      "adversarial_auc": res.metrics.get("adversarial", {}),
                                      "cross_dataset": res.metrics.get("cross_dataset", {}),
                                      "drifted_share": res.metrics.get("drift", {}).get("drifted_share")})
            tracker.log_artifact(rid, res.reports_dir, "reports")
            return res

        return _cached(layout, tracker, rid, stage_inputs.evaluate(params, layout), evaluate.EvaluateResult,
                       compute)


@task(name="monitor", cache_policy=NO_CACHE)
def monitor_task(params: Params, layout: Layout, tracker: Tracker, parent: str) -> monitor.MonitorResult | None:
    """The week's served traffic against production's reference; None (said why) when there is nothing to judge."""
    try:
        res = monitor.run(params, layout, tracker, parent_id=parent)
    except DfdError as exc:  # no production model yet, no reference, no log: the retraining must still run
        print(f"monitor: not run: {exc}")
        return None
    print(f"monitor: {res.status}: {res.message}")
    return res


def force_retrain(params: Params, layout: Layout) -> None:
    """Forget the training stages' records and resume points, so that they train anew on unchanged inputs."""
    cache = StageCache(layout.artifacts, layout.root)
    for m in params.models:
        cache.forget(stage_inputs.train(params, layout, m).name)
        # A finished run's last.pt would be "resumed" at its last epoch: nothing would train.
        (layout.model_dir(m) / "last.pt").unlink(missing_ok=True)


@task(name="register", cache_policy=NO_CACHE, retries=1, retry_condition_fn=_transient)
def register_task(params: Params, layout: Layout, tracker: Tracker, parent: str,
                  retrain_trigger: str | None = None) -> register.RegisterResult:
    # register.run opens its own nested run; when nothing it depends on changed, the version it registered last
    # time is the answer, and a small nested run says so.
    cache = StageCache(layout.artifacts, layout.root)
    inputs = stage_inputs.register(params, layout, tracker.tracking_uri)
    check = cache.check(inputs, register.RegisterResult)
    if check.up_to_date:
        res = check.result
        with tracker.run("register", parent, {"up_to_date": "true", "stage_fingerprint": check.fingerprint,
                                              "model_version": str(res.version)}):
            print(f"register: up to date; nothing changed since version {res.version} of {res.model_name}")
        return res
    print(f"register: running ({check.reason})")
    cache.forget(inputs.name)
    start = time.perf_counter()
    from prefect.runtime import flow_run  # the flow run id goes on the model version as lineage

    res = register.run(params, layout, tracker, parent, flow_run.id, retrain_trigger)
    cache.save(check, inputs, res, res.run_id, round(time.perf_counter() - start, 3))
    return res
