"""The `dfd` command line: one entry point for users, dvc.yaml, Docker and Prefect deployments.

Exit codes: 0 success, 2 a user-facing error (bad params, bad data, missing upstream output), 1 anything else;
`dfd run`/`dfd demo`: 3 when the pipeline finished but an enabled alert channel could not deliver (a failed gate
nobody was told about must not look fine; a failed gate whose alerts were delivered exits 0: not promoting is the
gate doing its job).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfd.platform.config import Params, json_schema, load_params
from dfd.platform.errors import DfdError

STAGES = ("ingest", "faces", "train", "ensemble", "evaluate", "register")
DEMO_OVERRIDE = "configs/demo.yaml"


def _params(args: argparse.Namespace) -> Params:
    """Load the params and check every name and device in them, before any work (one line, exit 2, on a problem)."""
    from tasks.preflight import check_params

    params = load_params(args.params, args.override)
    check_params(params)
    return params


def cmd_config(args: argparse.Namespace) -> int:
    if args.schema:
        print(json.dumps(json_schema(), indent=2))
    else:
        params = load_params(args.params, args.override)
        print(json.dumps(params.model_dump(mode="json"), indent=2))
        from tasks.preflight import check_params

        check_params(params)  # printed first, then the names or device that would fail a run, as the error
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from dfd.data.demo_data import generate

    params = load_params(args.params, args.override) if Path(args.params).is_file() else Params()
    d = params.demo_data
    out = Path(args.out or params.data.root)
    counts = generate(out, seed=args.seed, identities=d.identities, images_per_identity=d.images_per_identity,
                      videos=d.videos, frames_per_video=d.frames_per_video, image_size=d.image_size)
    print(f"demo dataset written to {out}: {counts['real']} real, {counts['fake']} fake (seed {args.seed})")
    return 0


def cmd_validate_dataset(args: argparse.Namespace) -> int:
    from dfd.data.validation import validate
    from dfd.platform.config import DataParams
    from dfd.platform.errors import DataError
    from dfd.platform.files import write_json

    base = load_params(args.params, args.override).data if Path(args.params).is_file() else DataParams()
    data = base.model_copy(update={"adapter": args.adapter or base.adapter})
    root = Path(args.path)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    result = validate(root, data)
    # Beside the dataset's other reports (data.workdir/manifests, where ingest writes), never the current folder.
    report = Path(args.report) if args.report else Path(base.workdir) / "manifests" / f"{root.name}.validation.json"
    summary = result.to_dict()
    write_json(report, summary)
    print(f"{'dataset':<18}{root}  (adapter {data.adapter})")
    print(f"{'usable':<18}{summary['samples']} of {summary['candidates']}: "
          f"{summary['classes']['real']} real, {summary['classes']['fake']} fake")
    for method, n in summary["methods"].items():
        print(f"{'  ' + method:<18}{n}")
    print(f"{'bad':<18}{len(result.bad)}")
    for row in result.bad[:20]:
        print(f"  {row['path']}: {row['reason']}")
    if len(result.bad) > 20:
        print(f"  ... {len(result.bad) - 20} more in {report}")
    for w in result.warnings:
        print(f"warning: {w}")
    for e in result.errors:
        print(f"error: {e}")
    print(f"report: {report}")
    return 1 if result.errors else 0


def cmd_dataset_add(args: argparse.Namespace) -> int:
    from dfd.data.datasets_registry import add_dataset

    record = add_dataset(Path(args.path), args.name, args.adapter, Path(args.params), push=args.push)
    print(f"dataset '{args.name}' tracked by DVC ({record['dvc_file']}, {record['data_hash']}) and set as "
          f"data.name/data.root in {args.params}")
    return 0


def cmd_dataset_remote(args: argparse.Namespace) -> int:
    from dfd.data.datasets_registry import set_remote

    remote = set_remote(args.url, Path(args.params).resolve().parent, args.endpoint, args.name)
    where = f" at {remote['endpoint']}" if remote["endpoint"] else ""
    print(f"DVC default remote '{remote['name']}' is {remote['url']}{where} (.dvc/config: commit it)")
    return 0


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

    params = _params(args)
    layout = Layout.from_params(params, Path.cwd())
    name = args.name
    if name == "ingest":
        from tasks import ingest

        res: Any = ingest.run(params, layout)
        print(f"ingest: {res.samples} samples, {res.bad} bad -> {res.manifest}")
    elif name == "faces":
        from tasks import faces

        res = faces.run(params, layout)
        print(f"faces: {res.crops} crops ({res.extracted} samples extracted, {res.skipped} up to date) -> {res.index}")
    elif name == "train":
        from tasks import train

        if not args.model:
            raise DfdError("`dfd stage train` needs --model", f"one of {', '.join(params.models)}")
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


def cmd_rollback(args: argparse.Namespace) -> int:
    from dfd.platform.tracking import Tracker
    from tasks.register import rollback

    params = _params(args)
    cfg = params.registry
    old, new = rollback(cfg, Tracker.from_params(params, Path.cwd()), args.to, args.reason or "")
    print(f"rollback: {cfg.model_name} @{cfg.alias} moved from version {old} to version {new}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks.compare import compare

    params = _params(args)
    dataset = Path(args.dataset) if args.dataset else Layout.from_params(params, Path.cwd()).faces_index
    result = compare(params, Tracker.from_params(params, Path.cwd()), args.a, args.b, dataset,
                     None if args.split == "all" else args.split, args.max_crops, args.bootstrap, args.seed)
    print("\n".join(result["lines"]))
    if args.out:
        from dfd.platform.files import write_json

        write_json(Path(args.out), {k: v for k, v in result.items() if k != "lines"})
        print(f"written to {args.out}")
    return 0


def _print_summary(summary: Any, root: Path) -> None:
    m = summary.metrics
    print()
    print(f"Pipeline run {summary.run_id} finished.")
    if getattr(summary, "unchanged", False):
        print(f"  nothing changed since version {summary.version}: no stage ran, nothing was registered")
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
    if not summary.registered:
        print(f"  registered model: {summary.model_name}: {summary.message}")
    else:
        status = (f"promoted to alias '{summary.alias}'" if summary.promoted
                  else f"NOT promoted ('{summary.alias}' unchanged)")
        print(f"  registered model: {summary.model_name} version {summary.version}, {status}")
    print()
    print("See the results:")
    print(f"  MLflow UI:  mlflow ui --backend-store-uri {summary.tracking_uri}   (then http://127.0.0.1:5000)")
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
    for _ in get_adapter(params.data.adapter)(data_root, params.data):  # raises on a missing or empty class folder
        pass
    from dfd.platform.alerts import check_alert_settings

    check_alert_settings(params.alerts)  # a bad webhook URL is found now, not after training (never echoed)
    from dfd.platform.storage_check import check_storage

    check_storage(params, root)  # every S3 bucket in use is writable (bounded retries: seconds when down)


def cmd_run(args: argparse.Namespace) -> int:
    preflight(_params(args), Path.cwd())  # before importing the flow (Prefect, torch): a mistake costs seconds

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
            signum = _interrupt_signal(exc)
            if signum is None:
                raise
            _stop_now(signum)
    _print_summary(summary, Path.cwd())
    return 3 if "failed" in summary.alerts.values() else 0


def cmd_demo(args: argparse.Namespace) -> int:
    if DEMO_OVERRIDE not in args.override:
        args.override = [DEMO_OVERRIDE, *args.override]
    params = _params(args)
    if not (Path(params.data.root) / "metadata.json").is_file():
        args.out = None
        cmd_demo_data(args)
    return cmd_run(args)


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy, prefect_yaml

    params = _params(args)
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


def _model_for(args: argparse.Namespace) -> tuple[Params, Any]:
    """Params (defaults when there is no params file) and the model `--model` names, loaded."""
    from dfd.platform.tracking import resolve_tracking_uri
    from dfd.serving.registry_model import default_model_uri, load

    params = _params(args) if Path(args.params).is_file() else Params()
    uri = args.model or default_model_uri(params)
    return params, load(uri, resolve_tracking_uri(params, Path.cwd()))


def cmd_predict(args: argparse.Namespace) -> int:
    from dfd.serving.predict import UsageError, run_predict

    if args.aggregate is not None:
        from dfd.evaluation.aggregate import list_aggregations

        if args.aggregate not in list_aggregations():
            raise UsageError(f"unknown aggregation '{args.aggregate}'", f"one of {', '.join(list_aggregations())}")
    params, model = _model_for(args)
    scorer = model.python_model.scorer
    if scorer is None:
        raise DfdError(f"model {model.uri} was registered without its faces params: it scores crops only",
                       "register it again with this version of dfd")
    scorer.limits = params.serve
    label = f"{model.uri} (version {model.version})" if model.version else model.uri
    return run_predict(scorer, args.paths, label, Path(args.out) if args.out else None, args.aggregate,
                       Path(args.save_crops) if args.save_crops else None, progress=not args.no_progress)


def cmd_serve(args: argparse.Namespace) -> int:
    from dfd.platform.tracking import resolve_tracking_uri
    from dfd.serving.registry_model import default_model_uri
    from dfd.serving.server import serve

    params = _params(args) if Path(args.params).is_file() else Params()
    serve(args.model or default_model_uri(params), resolve_tracking_uri(params, Path.cwd()), params.serve,
          args.host, args.port)
    return 0


def cmd_deploy_model(args: argparse.Namespace) -> int:
    from dfd.platform.tracking import resolve_tracking_uri
    from dfd.serving.deploy import deploy_model
    from dfd.serving.registry_model import default_model_uri

    params = _params(args) if Path(args.params).is_file() else Params()
    if args.verify:
        from dfd.serving.deploy import check_deployment

        manifest = check_deployment(args.to, params.storage)
        print(f"{args.to}: {len(manifest['files'])} files match their checksums; health check passed "
              f"(scores {manifest['health_check']['scores']})")
        return 0
    manifest = deploy_model(args.model or default_model_uri(params), resolve_tracking_uri(params, Path.cwd()),
                            args.to, params.storage)
    print(f"deployed {manifest['source']['uri']} (version {manifest['source']['version']}) to {args.to}: "
          f"{len(manifest['files'])} files, health check passed (scores {manifest['health_check']['scores']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfd", description="Train, evaluate and ship deepfake detectors.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--override", action="append", default=[], metavar="FILE",
                        help="a params file merged on top (repeatable), e.g. configs/demo.yaml")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the whole pipeline as a Prefect flow")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="generate the demo dataset if needed and run the pipeline on CPU-sized params")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("stage", help="run one stage (what dvc.yaml calls)")
    p.add_argument("name", choices=STAGES)
    p.add_argument("--model", help="the model to train (train stage)")
    p.add_argument("--epoch-log", metavar="FILE", help="train: append each epoch's metrics to FILE as JSON lines")
    p.add_argument("--no-progress", action="store_true", help="train: no per-step progress bar")
    p.set_defaults(func=cmd_stage)
    p = sub.add_parser("rollback", help="move the production alias back (to @previous unless --to)")
    p.add_argument("--to", metavar="VERSION", help="the version to restore (default: the @previous version)")
    p.add_argument("--reason", help="why; recorded as a tag on both versions with who and when")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("compare", help="A/B test two models on the same samples: metrics with CIs, AUC p-value")
    p.add_argument("a", help="model A: models:/NAME/VERSION, models:/NAME@ALIAS, a run id, or a version number")
    p.add_argument("b", help="model B, the same forms")
    p.add_argument("--dataset", metavar="INDEX", help="a faces index parquet (default: the current faces index)")
    p.add_argument("--split", default="test", help="split of the index to score, or `all` (default: test)")
    p.add_argument("--max-crops", type=int, default=2000, help="seeded sample of at most this many crops")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="FILE", help="also write the comparison as JSON")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("demo-data", help="write the offline demo dataset")
    p.add_argument("--out", help="dataset root (default: data.root from params)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)
    p = sub.add_parser("validate-dataset", help="check a dataset before training on it (exit 1 on errors)")
    p.add_argument("path", help="dataset root")
    p.add_argument("--adapter", help="dataset layout (default: data.adapter from params)")
    p.add_argument("--report", help="JSON report path (default: <data.workdir>/manifests/<name>.validation.json)")
    p.set_defaults(func=cmd_validate_dataset)
    p = sub.add_parser("dataset", help="manage datasets under DVC")
    dsub = p.add_subparsers(dest="action", required=True)
    p = dsub.add_parser("add", help="`dvc add` a dataset folder and make it the pipeline's dataset in params.yaml")
    p.add_argument("path")
    p.add_argument("--name", required=True)
    p.add_argument("--adapter", default="folder")
    p.add_argument("--push", action="store_true", help="also `dvc push` it to the configured remote")
    p.set_defaults(func=cmd_dataset_add)
    p = sub.add_parser("deploy", help="register the weekly and on-demand deployments with the Prefect server")
    p.add_argument("--write-prefect-yaml", nargs="?", const="prefect.yaml", metavar="FILE",
                   help="write prefect.yaml (default path) from params instead of registering")
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("predict", help="score image and video files or folders with the registered ensemble")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (searched recursively)")
    p.add_argument("--model", help="model URI (default: models:/<registry.model_name>@<registry.alias>) or folder")
    p.add_argument("--out", metavar="FILE", help="write one row per file to FILE.csv or FILE.json")
    p.add_argument("--aggregate", help="frames to video score: mean, median, confident (default: the model's)")
    p.add_argument("--save-crops", metavar="DIR", help="write each face crop, its P(fake) in the file name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("serve", help="serve the registered ensemble over HTTP (FastAPI)")
    p.add_argument("--model", help="model URI (default: models:/<registry.model_name>@<registry.alias>)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("deploy-model", help="copy the registered model to a folder or s3:// with checksums, "
                                            "and health-check the copy")
    p.add_argument("--to", required=True, metavar="DIR|s3://bucket/prefix")
    p.add_argument("--model", help="model URI (default: models:/<registry.model_name>@<registry.alias>)")
    p.add_argument("--verify", action="store_true", help="only check an existing deployment at --to")
    p.set_defaults(func=cmd_deploy_model)
    p = dsub.add_parser("remote", help="set the DVC default remote (s3://bucket/prefix; --endpoint for MinIO)")
    p.add_argument("url")
    p.add_argument("--endpoint", help="S3-compatible endpoint URL (MinIO); leave out for AWS")
    p.add_argument("--name", default="storage", help="remote name (default: storage)")
    p.set_defaults(func=cmd_dataset_remote)
    p = sub.add_parser("config", help="print the resolved params, or their JSON schema")
    p.add_argument("--schema", action="store_true", help="print the JSON schema of params.yaml")
    p.set_defaults(func=cmd_config)
    return parser


class Interrupted(KeyboardInterrupt):
    """SIGTERM (docker stop, timeout) handled like Ctrl-C: `finally` blocks run, children stop, state is resumable."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: Any) -> None:
    # Stop the training children first (from a thread: a handler must return quickly), then unwind this process.
    if "flows.train_process" in sys.modules:
        from flows.train_process import stop_all_children

        threading.Thread(target=stop_all_children, name="dfd-stop-children", daemon=True).start()
    raise Interrupted(signum)


def _interrupt_signal(exc: BaseException) -> int | None:
    """The signal behind `exc` when it is an interrupt: Ctrl-C, our SIGTERM handler, or Prefect's own (a flow run
    replaces the SIGTERM handler with one raising TerminationSignal); None for any other exception."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    signum = getattr(exc, "signal", None) if type(exc).__name__ == "TerminationSignal" else None
    return int(signum) if signum is not None else None


def _stop_now(signum: int) -> None:
    """Stop an interrupted flow run within seconds: kill the training children, then leave without unwinding.

    A normal exit would wait for Prefect's task threads (each blocked on a child until it finishes training) and
    for its log and event workers to flush to the temporary server. Every finished output is already on disk, each
    model's last.pt included, so the next run resumes; the temporary server stops by its parent-death signal.
    """
    from flows.train_process import stop_all_children

    stop_all_children()
    print("dfd: interrupted; finished outputs are kept and the next run resumes from them", file=sys.stderr,
          flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)


def _os_error(exc: OSError) -> DfdError | None:
    """A one-line error for the OS errors a user can fix (permissions, a full disk), naming the path."""
    where = exc.filename or "an output file"
    if isinstance(exc, PermissionError):
        return DfdError(f"permission denied writing {where}",
                        "make the folder writable (chmod/chown), or point the outputs elsewhere in params")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DfdError(f"no space left on the device while writing {where}",
                        "free disk space (or move data.workdir/artifacts to a bigger disk), then rerun: "
                        "finished outputs are kept")
    if exc.errno == errno.EROFS:
        return DfdError(f"read-only file system at {where}", "point the outputs at a writable folder in params")
    return None


def main(argv: list[str] | None = None) -> int:
    from dfd.platform.procs import arm_from_env

    arm_from_env()  # a child of the flow dies with it
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic", "numba"):  # every Prefect API call would print a line
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        return args.func(args)
    except DfdError as exc:
        print(f"dfd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        err = _os_error(exc)
        if err is None:
            raise
        print(f"dfd: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as exc:
        if "flows.train_process" in sys.modules:
            from flows.train_process import stop_all_children

            stop_all_children()
        print("dfd: interrupted; finished outputs are kept and the next run resumes from them", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
