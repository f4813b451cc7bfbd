"""The `dfd` command line: one entry point for users, dvc.yaml, Docker and Prefect deployments.

Exit codes: 0 success, 2 a user-facing error (bad params, bad data, missing upstream output), 1 anything else;
`dfd run`/`dfd demo`: 3 when the pipeline finished but an enabled alert channel could not deliver (a failed gate
nobody was told about must not look fine; a failed gate whose alerts were delivered exits 0: not promoting is the
gate doing its job).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading

from dfd.commands import STAGES
from dfd.commands.data import (
    cmd_config,
    cmd_dataset_add,
    cmd_dataset_get,
    cmd_dataset_remote,
    cmd_demo_data,
    cmd_validate_dataset,
)
from dfd.commands.interrupts import on_signal
from dfd.commands.models import (
    cmd_compare,
    cmd_deploy_model,
    cmd_export,
    cmd_predict,
    cmd_rollback,
    cmd_serve,
    cmd_weights_fetch,
)
from dfd.commands.monitoring import cmd_monitor
from dfd.commands.pipeline import cmd_demo, cmd_deploy, cmd_run, cmd_stage
from dfd.platform.errors import DfdError
from dfd.platform.interrupts import Interrupted


def version_line() -> str:
    """`dfd <package version> (git <commit>)`: the commit of the checkout the package runs from (editable install)."""
    import importlib.metadata
    from pathlib import Path

    from dfd.data.provenance import git_commit

    try:
        version = importlib.metadata.version("dfd")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"dfd {version} (git {git_commit(Path(__file__).resolve().parent)})"


class _Version(argparse.Action):
    """`--version`: computed only when asked (it runs git), then exit 0."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfd", description="Train, evaluate and ship deepfake detectors.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--override", action="append", default=[], metavar="FILE",
                        help="a params file merged on top (repeatable), e.g. configs/demo.yaml")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, nargs=0, help="package version and git commit, then exit")
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
    p.add_argument("--force", action="store_true",
                   help="ingest: run even when its inputs (data, params, code) are unchanged since its last run")
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
    p.add_argument("--move", action="store_true", help="a folder outside the project: move it to data/raw/NAME")
    p.add_argument("--cache-dir", metavar="DIR", help="a folder outside the project: put the DVC cache here (on the "
                   "dataset's disk) and link the data into data/raw/NAME")
    p.set_defaults(func=cmd_dataset_add)
    p = dsub.add_parser("get", help="a public dataset behind its publisher's form: print the publisher's steps, run "
                                    "its tool when given (--script, --kaggle), then check, validate and offer `add`")
    p.add_argument("dataset", choices=["ffpp", "celebdf", "dfdc"])
    p.add_argument("--to", metavar="DIR", help="where the dataset goes (default: data/raw/<dataset>)")
    p.add_argument("--script", metavar="PATH", help="ffpp: the download-FaceForensics.py the authors sent you; its "
                   "options follow --, e.g. -- -d all -c c23 -t videos --server EU2")
    p.add_argument("--kaggle", action="store_true",
                   help="dfdc: run `kaggle competitions download -c deepfake-detection-challenge -p DIR`")
    p.add_argument("--archive", metavar="ZIP", help="celebdf: the archive the publisher's link gave you, to unpack")
    p.add_argument("--min-free-gb", type=float, metavar="N", help="require N GB free instead of the documented size")
    p.add_argument("--add", action="store_true", help="also run `dfd dataset add` when the checks pass")
    p.add_argument("--name", help="the name for `dataset add` (default: the dataset's)")
    p.set_defaults(func=cmd_dataset_get, script_args=[])  # what follows `--` (see `parse`)
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
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"],
                   help="inference precision (default: serve.precision); all but torch fp32 are checked against it")
    p.add_argument("--engine", choices=["torch", "onnxruntime"],
                   help="what runs the members (default: serve.engine); onnxruntime: fp32 or int8 ONNX members")
    p.add_argument("--log", action="store_true", help="record one traffic record per file under monitor.log_dir")
    p.add_argument("--report", metavar="DIR", help="write one self-contained HTML report per file (tracks, timeline, "
                   "heatmaps) and an index.html into DIR")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("serve", help="serve the registered ensemble over HTTP (FastAPI)")
    p.add_argument("--model", help="model URI (default: models:/<registry.model_name>@<registry.alias>)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"],
                   help="inference precision (default: serve.precision)")
    p.add_argument("--engine", choices=["torch", "onnxruntime"], help="what runs the members (default: serve.engine)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without a token in $serve.auth_token_env (not recommended)")
    p.add_argument("--from", dest="from_deployment", metavar="DIR|s3://bucket/prefix",
                   help="serve a `dfd deploy-model` deployment instead of --model: its signature is checked with "
                        "$DFD_DEPLOY_KEY, its current version copied to a private folder and checked against its "
                        "SHA-256 manifest, and that copy is loaded")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="with --from: accept a deployment without a signature (made before dfd signed them; "
                        "`dfd deploy-model --migrate` signs it)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("export", help="export the ensemble's members to ONNX (and int8, ensemble.export) and "
                                      "check them against PyTorch on the test crops")
    p.add_argument("--out", default="artifacts/export", metavar="DIR", help="where the .onnx files and export.json go")
    p.add_argument("--int8", action="store_true", help="also int8 (default: ensemble.export.int8)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("deploy-model", help="copy the registered model to a folder or s3:// with checksums, "
                                            "and health-check the copy")
    p.add_argument("--to", required=True, metavar="DIR|s3://bucket/prefix")
    p.add_argument("--model", help="model URI (default: models:/<registry.model_name>@<registry.alias>)")
    p.add_argument("--verify", action="store_true", help="only check an existing deployment at --to")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="with --verify: check a deployment without a signature (old layout, or one version folder)")
    p.add_argument("--keep", type=int, metavar="N",
                   help="versions kept under --to, the new one included (default: 3); older ones are removed")
    p.add_argument("--migrate", action="store_true",
                   help="only bring an older deployment at --to into the versioned layout and sign it with "
                        "$DFD_DEPLOY_KEY (trusts what is there: check where it came from first)")
    p.set_defaults(func=cmd_deploy_model)
    p = dsub.add_parser("remote", help="set the DVC default remote (s3://bucket/prefix; --endpoint for MinIO)")
    p.add_argument("url")
    p.add_argument("--endpoint", help="S3-compatible endpoint URL (MinIO); leave out for AWS")
    p.add_argument("--name", default="storage", help="remote name (default: storage)")
    p.set_defaults(func=cmd_dataset_remote)
    p = sub.add_parser("monitor", help="drift of the served traffic against the production model's reference; "
                                       "alerts on the thresholds in monitor:")
    p.add_argument("--since", metavar="WINDOW", help="how far back: 30m, 36h, 7d, 2w, or an ISO time such as "
                                                     "2026-05-04T03:00:00Z (default: monitor.window)")
    p.add_argument("--until", metavar="TIME", help="end of the window, an ISO time (default: now)")
    p.set_defaults(func=cmd_monitor)
    p = sub.add_parser("weights", help="the local cache of ImageNet weights (`pretrained: hub`) for offline runs")
    wsub = p.add_subparsers(dest="action", required=True)
    p = wsub.add_parser("fetch", help="download the weights the params' models need into the cache; say where it is")
    p.add_argument("--name", action="append", default=[], help="a timm model name (default: what params need)")
    p.add_argument("--mirror", help="a URL holding <name>.pth files, instead of the hub")
    p.set_defaults(func=cmd_weights_fetch)
    p = sub.add_parser("config", help="print the resolved params, or their JSON schema")
    p.add_argument("--schema", action="store_true", help="print the JSON schema of params.yaml")
    p.set_defaults(func=cmd_config)
    return parser


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


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments; what follows a `--` goes, unparsed, to the commands that pass it on (`dataset get --script`:
    the publisher script's own options), and is an error for the others."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if passed:
        if not hasattr(args, "script_args"):
            parser.error(f"arguments after -- ({' '.join(passed)}) are only for `dfd dataset get ffpp --script`")
        args.script_args = passed
    return args


def main(argv: list[str] | None = None) -> int:
    from dfd.platform.procs import arm_from_env

    arm_from_env()  # a child of the flow dies with it
    args = parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic", "numba"):  # every Prefect API call would print a line
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
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
