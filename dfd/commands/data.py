"""Subcommands about data and params: `config`, `demo-data`, `validate-dataset`, `dataset add|remote`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfd.platform.config import Params, json_schema, load_params


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

    params = load_params(args.params, args.override) if Path(args.params).is_file() else None
    base = params.data if params else DataParams()
    data = base.model_copy(update={"adapter": args.adapter or base.adapter})
    root = Path(args.path)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    # A dataset of reals only is usable when every model in params trains real_only (SBI).
    real_only = params is not None and all(m.train_on == "real_only" for m in params.models.values())
    result = validate(root, data, real_only=real_only)
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

    record = add_dataset(Path(args.path), args.name, args.adapter, Path(args.params), push=args.push,
                         move=args.move, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    print(f"dataset '{args.name}' tracked by DVC ({record['dvc_file']}, {record['data_hash']}) and set as "
          f"data.name/data.root in {args.params}; commit {record['dvc_file']} and {args.params}")
    return 0


def cmd_dataset_remote(args: argparse.Namespace) -> int:
    from dfd.data.datasets_registry import set_remote

    remote = set_remote(args.url, Path(args.params).resolve().parent, args.endpoint, args.name)
    where = f" at {remote['endpoint']}" if remote["endpoint"] else ""
    print(f"DVC default remote '{remote['name']}' is {remote['url']}{where} (.dvc/config: commit it)")
    return 0
