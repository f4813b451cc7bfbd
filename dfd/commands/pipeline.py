"""Subcommands that run the pipeline: `run`, `demo`, `stage`, `deploy` (scheduled deployments); the preflight."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfd.commands import DEMO_OVERRIDE, params_from_args
from dfd.commands.data import cmd_demo_data
from dfd.commands.interrupts import stop_now
from dfd.platform.config import Params
from dfd.platform.errors import DfdError
from dfd.platform.interrupts import interrupt_signal
from dfd.platform.uris import safe_uri


def _epoch_logger(path: str | None) -> Callable[[int, dict[str, float]], None] | None:
    """Append one JSON line per finished epoch to `path` (the flow tails it to log to MLflow live)."""
    if not path:
        return None

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        with open(path, "a") as fh:  # one write per line: a reader never sees half a record as complete
            fh.write(json.dumps({"epoch": epoch, "metrics": metrics}) + "\n")

    return on_epoch


def cmd_stage(args: argparse.Namespace) -> int:
    from dfd.platform.layout import Layout

    params = params_from_args(args)
    layout = Layout.from_params(params, Path.cwd())
    name = args.name
    if name == "ingest":
        from flows.cli_stages import ingest_cached

        res: Any = ingest_cached(params, layout, force=args.force)
        print(f"ingest: {res.samples} samples, {res.bad} bad -> {res.manifest}")
    elif name == "faces":
        from tasks import faces

        res = faces.run(params, layout)
        print(f"faces: {res.crops} crops ({res.extracted} samples extracted, {res.skipped} up to date) -> {res.index}")
    elif name == "recipes":
        from tasks import recipes

        paths = recipes.run(params, layout)
        print(f"recipes: {len(paths)} models' training inputs -> {paths[0].parent if paths else layout.artifacts}")
    elif name == "train":
        from tasks import train

        if not args.model:
            raise DfdError("`dfd stage train` needs --model", f"one of {', '.join(params.models)}")
        from tasks.preflight import check_weights

        check_weights(params, [args.model])  # offline ImageNet starts: one line now, not a traceback mid-stage
        res = train.run(params, layout, args.model, _epoch_logger(args.epoch_log), progress=not args.no_progress)
        if res.summary:  # under torchrun only rank 0 evaluates and reports
            print(f"train@{args.model}: best val AUC {res.summary['best_val_auc']:.4f} -> {res.best}")
    elif name == "ensemble":
        from tasks import ensemble

        res = ensemble.run(params, layout)
        print(f"ensemble: weights {json.dumps({k: round(v, 3) for k, v in res.weights.items()})} -> {res.spec}")
    elif name == "evaluate":
        from tasks import evaluate

        res = evaluate.run(params, layout)
        m = res.metrics["ensemble"]
        print(f"evaluate: test AUC {m['auc']:.4f}, video AUC {m['video_auc']:.4f}, EER {m['eer']:.4f} -> "
              f"{res.reports_dir} (the register stage decides the gate)")
    elif name == "register":
        from dfd.evaluation.gate import format_table
        from dfd.platform.tracking import Tracker
        from tasks import register

        res = register.run(params, layout, Tracker.from_params(params, Path.cwd()))
        print("\n".join(format_table(res.gate)))
        print(f"register: {res.model_name} v{res.version}: gate {'PASSED' if res.passed else 'FAILED'}; "
              f"{res.message}")
    return 0


def print_summary(summary: Any, root: Path) -> None:
    m = summary.metrics
    print()
    print(f"Pipeline run {summary.run_id} finished.")
    if getattr(summary, "unchanged", False):
        print(f"  nothing changed since version {summary.version}: nothing new to evaluate or register")
    print(f"  test AUC {m['auc']:.4f} | video AUC {m['video_auc']:.4f} | EER {m['eer']:.4f} | "
          f"accuracy {m['accuracy']:.4f}")
    from dfd.evaluation.gate import format_table

    gate = "PASSED" if summary.gate["passed"] else "FAILED (" + ", ".join(summary.gate["failed"]) + ")"
    print(f"  gate: {gate}")
    for line in format_table(summary.gate):
        print(f"    {line}")
    if summary.alerts:
        sent = [f"{ch} {state}" if state != "failed" else f"{ch} FAILED (see the log above)"
                for ch, state in summary.alerts.items()]
        print(f"  alerts: {', '.join(sent)}")
    if getattr(summary, "unchanged", False):  # the record of the last run, not a new decision
        print(f"  registered model: {summary.model_name} version {summary.version}, as left by the last run")
    elif not summary.registered:
        print(f"  registered model: {summary.model_name}: {summary.message}")
    else:
        status = (f"promoted to alias '{summary.alias}'" if summary.promoted
                  else f"NOT promoted ('{summary.alias}' unchanged)")
        print(f"  registered model: {summary.model_name} version {summary.version}, {status}")
    print()
    print("See the results:")
    print(f"  MLflow UI:  mlflow ui --backend-store-uri {safe_uri(summary.tracking_uri)}   (then http://127.0.0.1:5000)")
    print("  Prefect UI: prefect server start   (then http://127.0.0.1:4200)")
    print(f"  Reports:    {root / 'artifacts' / 'reports'}")


def preflight(params: Params, root: Path) -> None:
    """Cheap checks before the orchestrator starts: params parse, the dataset exists and lists real and fake files.

    A mistake here then costs a second and one clear line, not a server start-up and a task traceback.
    """
    from dfd.data.adapters import get_adapter
    from dfd.platform.errors import DataError

    data_root = root / params.data.root
    if not data_root.is_dir():
        raise DataError(f"dataset root not found: {data_root}",
                        "run `dfd demo-data`, or point data.root in params.yaml at your dataset")
    labels = {c.label for c in get_adapter(params.data.adapter)(data_root, params.data)}  # raises on a missing class
    if 1 not in labels and not all(m.train_on == "real_only" for m in params.models.values()):
        raise DataError(f"no fake sample in {data_root} (for the folder layout: 'fake/' is empty or missing)",
                        "add fakes, or train every model `train_on: real_only` (SBI makes the fakes)")
    from dfd.platform.alerts import check_alert_settings

    check_alert_settings(params.alerts)  # a bad webhook URL is found now, not after training (never echoed)
    from dfd.platform.storage_check import check_storage

    check_storage(params, root)  # every S3 bucket in use is writable (bounded retries: seconds when down)
    from tasks.preflight import check_export, check_weights

    check_weights(params)  # `pretrained: hub` weights missing offline: named now, before any stage runs
    check_export(params)  # ensemble.export on without its packages: named now, not after training


def cmd_run(args: argparse.Namespace) -> int:
    preflight(params_from_args(args), Path.cwd())  # before importing the flow (Prefect, torch): a mistake costs seconds

    from flows.logs import quiet_expected_failures
    from flows.pipeline import pipeline

    if not args.verbose:
        quiet_expected_failures()
    from prefect.settings import get_current_settings

    from flows.server import prefect_api

    # A private temporary server (unless PREFECT_API_URL names one): its logs go to a file, not into this output,
    # and it stops with this process, even a SIGKILLed one.
    with prefect_api(Path(get_current_settings().home) / "dfd-temporary-server.log"):
        try:
            summary = pipeline(path=args.params, overrides=args.override, root=str(Path.cwd()))
        except BaseException as exc:
            signum = interrupt_signal(exc)
            if signum is None:
                raise
            stop_now(signum)
    print_summary(summary, Path.cwd())
    return 3 if "failed" in summary.alerts.values() else 0


def cmd_demo(args: argparse.Namespace) -> int:
    if DEMO_OVERRIDE not in args.override:
        args.override = [DEMO_OVERRIDE, *args.override]
    params = params_from_args(args)
    if not (Path(params.data.root) / "metadata.json").is_file():
        args.out = None
        cmd_demo_data(args)
    return cmd_run(args)


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy, prefect_yaml

    params = params_from_args(args)
    if args.write_prefect_yaml:
        out = Path(args.write_prefect_yaml)
        out.write_text(prefect_yaml(params))
        print(f"wrote {out} from {args.params} (schedule: '{params.schedule.cron}' {params.schedule.timezone})")
        return 0
    ids = deploy(params, Path.cwd())
    print(f"registered {', '.join(f'deepfake-pipeline/{n}' for n in ids)} on work pool "
          f"'{params.schedule.work_pool}' (weekly: '{params.schedule.cron}' {params.schedule.timezone}); "
          f"start a worker: prefect worker start --pool {params.schedule.work_pool}")
    return 0
