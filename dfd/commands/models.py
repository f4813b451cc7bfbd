"""Subcommands that use registered models: `predict`, `serve`, `deploy-model`, `compare`, `rollback`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dfd.commands import params_from_args
from dfd.platform.config import Params, load_params
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
                        params.serve.max_precision_error, params.serve.engine)


def _serve_params(args: argparse.Namespace) -> Params:
    """Params (defaults when there is no params file), with `--precision`/`--engine` over `serve.*` (validated:
    each engine runs its own precisions).

    Scoring reads `serve`, `monitor`, `storage`, `mlflow` and `registry`, which the schema checks in full on load; the
    faces params travel with the model. So the training preflight (`params_from_args`: architectures, augmentations,
    devices, which imports the model registry) is not run: it checks names scoring never builds.
    """
    from pydantic import ValidationError

    from dfd.platform.config import ServeParams

    params = load_params(args.params, args.override) if Path(args.params).is_file() else Params()
    given = {k: getattr(args, k, None) for k in ("precision", "engine") if getattr(args, k, None)}
    if given.get("engine") == "onnxruntime" and "precision" not in given and params.serve.precision not in (
            "fp32", "int8"):
        given["precision"] = "fp32"  # --engine onnxruntime over a torch-only serve.precision: its exact one
    if given:
        try:
            serve = ServeParams.model_validate({**params.serve.model_dump(), **given})
        except ValidationError as exc:
            raise DfdError(exc.errors()[0]["msg"].removeprefix("Value error, "),
                           "pass a --precision the engine runs (torch: fp32, bf16, fp16; onnxruntime: fp32, int8)"
                           ) from None
        params = params.model_copy(update={"serve": serve})
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
    if model.engine_fallback:
        print(f"WARNING: {model.engine_fallback}")
    if model.precision != "fp32" or model.engine != "torch":
        label += (f", {model.engine} {model.precision}: P(fake) within {model.precision_error:.4f} of torch fp32 "
                  "on the example crops")
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


def cmd_export(args: argparse.Namespace) -> int:
    """`dfd export`: the pipeline's current ensemble (ensemble stage's output) as ONNX members, checked on the test
    crops against PyTorch; prints the agreement. Registering with `ensemble.export.onnx` logs the same files."""
    from dfd.platform.files import read_json
    from dfd.platform.layout import Layout
    from dfd.serving.onnx_export import export_ensemble, format_report

    params = params_from_args(args)
    layout = Layout.from_params(params, Path.cwd())
    spec_path = layout.ensemble_dir / "ensemble.json"
    if not spec_path.is_file():
        raise DfdError(f"not found: {spec_path}", "run the ensemble stage first (`dfd stage ensemble`)")
    spec = read_json(spec_path)
    cfg = params.ensemble.export.model_copy(update={"onnx": True, "int8": args.int8 or params.ensemble.export.int8})
    checkpoints = {m: layout.model_dir(m) / "best.pt" for m in spec["members"]}
    for m, ckpt in checkpoints.items():
        if not ckpt.is_file():
            raise DfdError(f"checkpoint of member '{m}' not found: {ckpt}", f"run `dfd stage train --model {m}`")
    report = export_ensemble(cfg, spec, checkpoints, layout.faces_index, Path(args.out))
    print("\n".join(format_report(report)))
    print(f"files and export.json: {args.out}")
    return 0


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
    if not args.insecure:  # refused before the traffic log starts: the refusal stays the one line it prints
        from dfd.serving.auth import check_exposure, tokens_from_env

        tokens = tokens_from_env(params.serve.auth_token_env, params.serve.auth_tokens_env)
        check_exposure(args.host, tokens[0] if tokens else None, False, params.serve.auth_token_env)
    traffic = _traffic_log(params, "serve")
    on_result = traffic.record if traffic else None
    try:
        if not getattr(args, "from_deployment", None):
            serve(args.model or default_model_uri(params), resolve_tracking_uri(params, Path.cwd()), params.serve,
                  args.host, args.port, args.insecure, on_result, params.report)
            return 0
        import tempfile

        from dfd.serving.deploy import private_copy

        # The copy lives as long as the server: loaded from a folder only this process writes, checked before loading.
        with tempfile.TemporaryDirectory(prefix="dfd-serve-") as tmp:
            copy = Path(tmp) / "model"
            manifest = private_copy(args.from_deployment, params.storage, copy, args.allow_unsigned)
            print(f"serving {args.from_deployment} version {manifest['version_id']}: {len(manifest['files'])} files "
                  "match their SHA-256 manifest" + (", signed" if manifest["signed"] else
                                                     " (UNSIGNED: --allow-unsigned; its origin is not checked)"))
            serve(str(copy), resolve_tracking_uri(params, Path.cwd()), params.serve, args.host, args.port,
                  args.insecure, on_result, params.report)
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

        manifest = check_deployment(args.to, params.storage, args.allow_unsigned)
        signed = "signature holds, " if manifest.get("signed") else "UNSIGNED, "
        print(f"{args.to}: {signed}{len(manifest['files'])} files match their checksums; health check passed "
              f"(scores {manifest['health_check']['scores']})")
        return 0
    if args.migrate:
        from dfd.serving.deploy import migrate

        manifest = migrate(args.to, params.storage)
        _audit(params, "migrate", args.to, manifest)
        print(f"migrated {args.to}: versions/{manifest['version_id']}/ signed and current (health check passed)")
        return 0
    manifest = deploy_model(args.model or default_model_uri(params), resolve_tracking_uri(params, Path.cwd()),
                            args.to, params.storage, keep=KEEP if args.keep is None else args.keep)
    _audit(params, "deploy", args.to, manifest)
    where = f"{args.to.rstrip('/')}/versions/{manifest['version_id']}"
    print(f"deployed {manifest['source']['uri']} (version {manifest['source']['version']}) to {where}: "
          f"{len(manifest['files'])} files, health check passed (scores {manifest['health_check']['scores']})"
          + (f"; removed old versions {', '.join(manifest['removed'])}" if manifest["removed"] else ""))
    return 0


def _audit(params: Params, action: str, target: str, manifest: dict[str, Any]) -> None:
    """One line in the audit log (`registry.audit_log`) for a deployment: where, which version, from what."""
    from dfd.platform.audit import audit_log
    from dfd.platform.uris import safe_uri

    log = audit_log(params.registry.audit_log, Path.cwd())
    if log is not None:
        source = manifest.get("source", {})
        log.append(action, target=safe_uri(target), version_id=manifest["version_id"], removed=manifest["removed"],
                   model={k: source.get(k) for k in ("uri", "name", "version", "alias")})


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """`dfd weights fetch`: fill the ImageNet weights cache on a machine with network, for a cluster without."""
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
