"""Subcommands that use registered models: `predict`, `serve`, `deploy-model`, `compare`, `rollback`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dfd.commands import params_from_args
from dfd.platform.config import Params
from dfd.platform.errors import DfdError


def cmd_rollback(args: argparse.Namespace) -> int:
    from dfd.platform.tracking import Tracker
    from tasks.register import rollback

    params = params_from_args(args)
    cfg = params.registry
    old, new = rollback(cfg, Tracker.from_params(params, Path.cwd()), args.to, args.reason or "")
    print(f"rollback: {cfg.model_name} @{cfg.alias} moved from version {old} to version {new}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks.compare import compare

    params = params_from_args(args)
    dataset = Path(args.dataset) if args.dataset else Layout.from_params(params, Path.cwd()).faces_index
    result = compare(params, Tracker.from_params(params, Path.cwd()), args.a, args.b, dataset,
                     None if args.split == "all" else args.split, args.max_crops, args.bootstrap, args.seed)
    print("\n".join(result["lines"]))
    if args.out:
        from dfd.platform.files import write_json

        write_json(Path(args.out), {k: v for k, v in result.items() if k != "lines"})
        print(f"written to {args.out}")
    return 0


def _model_for(args: argparse.Namespace) -> tuple[Params, Any]:
    """Params (defaults when there is no params file) and the model `--model` names, loaded."""
    from dfd.platform.tracking import resolve_tracking_uri
    from dfd.serving.registry_model import default_model_uri, load

    params = _serve_params(args)
    uri = args.model or default_model_uri(params)
    return params, load(uri, resolve_tracking_uri(params, Path.cwd()), params.serve.precision,
                        params.serve.max_precision_error)


def _serve_params(args: argparse.Namespace) -> Params:
    """Params (defaults when there is no params file), with `--precision` over `serve.precision`."""
    params = params_from_args(args) if Path(args.params).is_file() else Params()
    if getattr(args, "precision", None):
        params = params.model_copy(update={"serve": params.serve.model_copy(update={"precision": args.precision})})
    return params


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
    if model.precision != "fp32":
        label += f", {model.precision}: P(fake) within {model.precision_error:.4f} of fp32 on the example crops"
    if model.warning:  # before any score and in the summary, so that no reader takes a demo model's numbers seriously
        print(f"WARNING: {model.warning}")
        label += " [SYNTHETIC TRAINING DATA: scores on real media mean nothing]"
    traffic = _traffic_log(params, "predict") if args.log else None
    if args.log and traffic is None:
        raise DfdError("--log: monitor.log_dir is null, so there is nowhere to record", "set monitor.log_dir")
    report = _report_writer(params, model, label, Path(args.report)) if getattr(args, "report", None) else None
    try:
        return run_predict(scorer, args.paths, label, Path(args.out) if args.out else None, args.aggregate,
                           Path(args.save_crops) if args.save_crops else None, progress=not args.no_progress,
                           on_result=(lambda res: traffic.record(res, model.version)) if traffic else None,
                           report=report)
    finally:
        if traffic:
            traffic.close()


def _report_writer(params: Params, model: Any, label: str, out: Path) -> Any:
    """`--report DIR`: the writer, with the model's facts and (when heatmaps are asked for) its explainer."""
    from dfd.serving.heatmaps import Explainer
    from dfd.serving.report import ReportWriter, model_facts

    cfg = params.report
    py = model.python_model
    explainer = Explainer(py.spec, py.checkpoints) if cfg.heatmap_frames and cfg.embed_faces else None
    return ReportWriter(out, model_facts(model, label, py.scorer.threshold), explainer, cfg.embed_faces,
                        params.serve.log_names, cfg.heatmap_frames)


def cmd_serve(args: argparse.Namespace) -> int:
    from dfd.platform.tracking import resolve_tracking_uri
    from dfd.serving.registry_model import default_model_uri
    from dfd.serving.server import serve

    params = _serve_params(args)
    if args.model and getattr(args, "from_deployment", None):
        raise DfdError("--model and --from name two models", "give one of them")
    traffic = _traffic_log(params, "serve")
    on_result = traffic.record if traffic else None
    try:
        if not getattr(args, "from_deployment", None):
            serve(args.model or default_model_uri(params), resolve_tracking_uri(params, Path.cwd()), params.serve,
                  args.host, args.port, args.insecure, on_result)
            return 0
        import tempfile

        from dfd.serving.deploy import private_copy

        # The copy lives as long as the server: loaded from a folder only this process writes, checked before loading.
        with tempfile.TemporaryDirectory(prefix="dfd-serve-") as tmp:
            copy = Path(tmp) / "model"
            manifest = private_copy(args.from_deployment, params.storage, copy)
            print(f"serving {args.from_deployment} version {manifest['version_id']}: {len(manifest['files'])} files "
                  "match their SHA-256 manifest")
            serve(str(copy), resolve_tracking_uri(params, Path.cwd()), params.serve, args.host, args.port,
                  args.insecure, on_result)
    finally:
        if traffic:
            traffic.close()
    return 0


def _traffic_log(params: Params, source: str) -> Any:
    """The started traffic log `monitor.log_dir` names, or None when recording is off."""
    from dfd.monitoring.traffic import TrafficLog

    traffic = TrafficLog.from_params(params.monitor, params.storage, source, params.serve.log_names, Path.cwd())
    return traffic.start() if traffic else None


def cmd_deploy_model(args: argparse.Namespace) -> int:
    from dfd.platform.tracking import resolve_tracking_uri
    from dfd.serving.deploy import KEEP, deploy_model
    from dfd.serving.registry_model import default_model_uri

    params = params_from_args(args) if Path(args.params).is_file() else Params()
    if args.verify:
        from dfd.serving.deploy import check_deployment

        manifest = check_deployment(args.to, params.storage)
        print(f"{args.to}: {len(manifest['files'])} files match their checksums; health check passed "
              f"(scores {manifest['health_check']['scores']})")
        return 0
    if args.migrate:
        from dfd.serving.deploy import migrate

        manifest = migrate(args.to, params.storage)
        print(f"migrated {args.to} to versions/{manifest['version_id']}/ (health check passed)")
        return 0
    manifest = deploy_model(args.model or default_model_uri(params), resolve_tracking_uri(params, Path.cwd()),
                            args.to, params.storage, keep=KEEP if args.keep is None else args.keep)
    where = f"{args.to.rstrip('/')}/versions/{manifest['version_id']}"
    print(f"deployed {manifest['source']['uri']} (version {manifest['source']['version']}) to {where}: "
          f"{len(manifest['files'])} files, health check passed (scores {manifest['health_check']['scores']})"
          + (f"; removed old versions {', '.join(manifest['removed'])}" if manifest["removed"] else ""))
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """`dfd weights fetch`: fill the ImageNet weights cache on a machine with network, for a cluster without."""
    from dfd.platform.config import load_params
    from models.hub_cache import cache_dir, fetch
    from tasks.preflight import hub_weights

    names = list(args.name)
    if not names:
        params = load_params(args.params, args.override) if Path(args.params).is_file() else Params()
        names = sorted({n for ns in hub_weights(params).values() for n in ns})
    if not names:
        print("no model in params starts from ImageNet (pretrained: hub): nothing to fetch")
        return 0
    for name, info in fetch(names, args.mirror).items():
        print(f"{name:<24}{info['sha256'][:16]}  <- {info['source']}")
    print(f"cache: {cache_dir()} (copy this folder to the same path on the offline machine, or point "
          f"$DFD_WEIGHTS_DIR at it)")
    return 0
