"""Subcommands about data and params: `config`, `demo-data`, `validate-dataset`, `dataset add|remote|get`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
    print_validation(result, report)
    return 1 if result.errors else 0


def print_validation(result: Any, report: Path) -> None:
    """Write a `ValidationResult` to `report` and print its summary (validate-dataset's and dataset get's)."""
    from dfd.platform.files import write_json

    summary = result.to_dict()
    write_json(report, summary)
    root, adapter = result.root, result.adapter
    print(f"{'dataset':<18}{root}  (adapter {adapter})")
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


def cmd_dataset_get(args: argparse.Namespace) -> int:
    """Print the publisher's steps, run its tool when handed over, unpack, check the layout, validate, offer `add`."""
    from dfd.data import dataset_get as get
    from dfd.data.publishers import PUBLISHERS, ffpp_options
    from dfd.data.validation import validate
    from dfd.platform.config import DataParams
    from dfd.platform.errors import DataError

    pub = PUBLISHERS[args.dataset]
    root = Path(args.to or f"data/raw/{pub.name}")
    script_args = list(args.script_args)
    for flag, value, only in (("--script", args.script, "ffpp"), ("--kaggle", args.kaggle, "dfdc"),
                              ("--archive", args.archive, "celebdf")):
        if value and pub.name != only:
            raise DataError(f"{flag} is for {only}, not {pub.name}", f"see the steps: dfd dataset get {pub.name}")
    if script_args and not args.script:
        raise DataError(f"options after -- go to FF++'s download script: {' '.join(script_args)}",
                        "pass the script with --script PATH")
    print(f"{pub.title}: the publisher's steps")
    for i, step in enumerate(pub.steps, 1):
        print(f"  {i}. {step.format(to=root)}")
    print(f"  Interrupted? {pub.resume}.")
    tool = (get.ffpp_command(Path(args.script), root, script_args) if args.script
            else get.kaggle_command(root) if args.kaggle else None)
    if tool is not None:
        print(get.check_space(root, *get.estimate(pub, script_args, args.kaggle), args.min_free_gb))
        root.mkdir(parents=True, exist_ok=True)
        get.run_tool(tool, "FF++'s download script" if args.script else "the Kaggle CLI", pub)
    if args.archive and not Path(args.archive).is_file():
        raise DataError(f"archive not found: {args.archive}", "pass the zip the publisher's link gave you")
    archives = ([Path(args.archive)] if args.archive else []) + (get.root_archives(pub, root) if root.is_dir() else [])
    for archive in archives:
        root.mkdir(parents=True, exist_ok=True)
        written = get.unpack(archive, root, get.TOP_FOLDERS.get(pub.name, frozenset()))
        print(f"unpacked {archive.name}: {written} file(s) written" + (" (the rest were there)" if written else ""))
    if not root.is_dir() or not any(root.iterdir()):
        raise DataError(f"no {pub.name} data at {root} yet", "follow the steps above, then run this command again")
    for part in get.leftover_parts(root):
        print(f"warning: {part} is a partial download (ignored; delete it or rerun the download to finish)")

    params = load_params(args.params, args.override) if Path(args.params).is_file() else None
    base = params.data if params else DataParams()
    update: dict[str, Any] = {"adapter": pub.adapter}
    if pub.name == "ffpp" and args.script:
        update["compression"] = ffpp_options(script_args).compression or "raw"  # what the script fetched
    data = base.model_copy(update=update)
    if pub.name == "ffpp":
        get.check_ffpp_compression(root, data.compression)
    real_only = params is not None and all(m.train_on == "real_only" for m in params.models.values())
    result = validate(root, data, real_only=real_only)  # the adapter refuses a layout that is not the dataset's
    print_validation(result, Path(base.workdir) / "manifests" / f"{root.name}.validation.json")
    missing = get.missing_listed(result.bad)
    if missing:
        raise DataError(f"download incomplete: {len(missing)} file(s) the dataset lists are missing at {root} "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
                        f"rerun the download: {pub.resume}")
    if result.errors:
        return 1
    if pub.name == "ffpp" and data.splits_dir is None and not (root / "splits").is_dir():
        print(f"note: no official splits at {root / 'splits'}: ingest will split by identity itself (step 5 above)")
    if data.compression != base.compression and pub.name == "ffpp":
        print(f"note: the videos are at {data.compression}: set data.compression: {data.compression} in "
              f"{args.params} (it says {base.compression})")
    add = f"dfd dataset add {root} --name {args.name or pub.name} --adapter {pub.adapter}"
    if not args.add:
        print(f"next: track it with DVC and make it the pipeline's dataset: {add}")
        return 0
    from dfd.data.datasets_registry import add_dataset

    record = add_dataset(root, args.name or pub.name, pub.adapter, Path(args.params))
    print(f"dataset '{record['name']}' tracked by DVC ({record['dvc_file']}, {record['data_hash']}) and set as "
          f"data.name/data.root in {args.params}; commit {record['dvc_file']} and {args.params}")
    return 0
