"""ingest: a dataset root, through its adapter, into the manifest and `ingest_report.json`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from dfd.adapters import get_adapter
from dfd.config import DataParams, IngestParams, Params
from dfd.errors import DataError
from dfd.layout import Layout
from dfd.manifest import assign_splits, sample_id, write_manifest
from dfd.media import check_media, media_kind
from dfd.provenance import dir_hash
from dfd.reporting import write_json


@dataclass(frozen=True)
class IngestResult:
    """Paths written by ingest, and the counts a caller logs."""

    manifest: Path
    report: Path
    samples: int
    bad: int
    data_hash: str


def ingest(data: DataParams, cfg: IngestParams, root: Path, manifest_path: Path, report_path: Path,
           seed: int) -> IngestResult:
    """Build the manifest of the dataset at `root`.

    Every unusable input (missing, zero-byte, unreadable, corrupt, outside the root) becomes a row of the report
    with its reason; the stage fails only when more than `cfg.max_bad_share` of the samples are bad, and writes the
    report first so the user can see which.

    Args:
        data: Dataset name and adapter.
        cfg: Split shares and bad-input tolerance.
        root: Dataset root.
        manifest_path: Where to write the parquet manifest.
        report_path: Where to write the JSON report.
        seed: Split seed.
    """
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}",
                        "run `dfd demo-data`, or point data.root in params.yaml at your dataset")
    adapter = get_adapter(data.adapter)
    rows, bad = [], []
    candidates = list(adapter(root))
    for cand in tqdm(candidates, desc="ingest", unit="file", leave=False):
        problem = cand.problem or check_media(root / cand.rel_path)
        if problem:
            bad.append({"path": cand.rel_path, "reason": problem})
            continue
        rows.append({"sample_id": sample_id(data.name, cand.rel_path), "dataset": data.name, "path": cand.rel_path,
                     "media": media_kind(Path(cand.rel_path)), "label": cand.label, "method": cand.method,
                     "identity": cand.identity})
    total = len(rows) + len(bad)
    report = {"dataset": data.name, "root": str(root), "adapter": data.adapter, "candidates": total,
              "samples": len(rows), "bad": bad, "bad_share": len(bad) / total if total else 0.0}
    if not rows:
        write_json(report_path, report)
        raise DataError(f"no usable samples in {root}: all {total} files are bad", f"see {report_path}")
    df = pd.DataFrame(rows)
    splits = assign_splits(df["identity"].tolist(), cfg.val_share, cfg.test_share, seed)
    df["split"] = df["identity"].map(splits)
    report["per_split"] = {s: dict(Counter(df.loc[df["split"] == s, "label"].map({0: "real", 1: "fake"})))
                           for s in ("train", "val", "test")}
    report["identities"] = {s: int(df.loc[df["split"] == s, "identity"].nunique()) for s in ("train", "val", "test")}
    report["data_hash"] = dir_hash(root)
    write_json(report_path, report)
    if report["bad_share"] > cfg.max_bad_share:
        raise DataError(f"{len(bad)} of {total} samples in {root} are unusable ({report['bad_share']:.0%} > "
                        f"ingest.max_bad_share={cfg.max_bad_share:.0%})", f"see the reasons in {report_path}")
    for label, name in ((0, "real"), (1, "fake")):
        if (df["label"] == label).sum() < cfg.min_per_class:
            raise DataError(f"only {(df['label'] == label).sum()} usable {name} samples in {root}",
                            f"ingest.min_per_class is {cfg.min_per_class}")
    write_manifest(df, manifest_path)
    return IngestResult(manifest_path, report_path, len(df), len(bad), report["data_hash"])


def run(params: Params, layout: Layout) -> IngestResult:
    """The stage as `dfd stage ingest` and the flow call it."""
    return ingest(params.data, params.ingest, layout.resolve(params.data.root), layout.manifest,
                  layout.ingest_report, params.train.seed)
