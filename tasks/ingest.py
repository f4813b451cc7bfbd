"""ingest: a dataset root, through its adapter, into the manifest and `ingest_report.json`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dfd.data.identity import cluster_names
from dfd.data.manifest import SPLIT_SCHEME, SPLITS, assign_splits, sample_id, write_manifest
from dfd.data.media import media_kind
from dfd.data.validation import validate
from dfd.platform.config import DataParams, IngestParams, Params
from dfd.platform.errors import DataError
from dfd.platform.file_memo import FileHasher
from dfd.platform.files import write_json
from dfd.platform.layout import Layout
from dfd.platform.stage_cache import project_hasher


@dataclass(frozen=True)
class IngestResult:
    """Paths written by ingest, and the counts a caller logs."""

    manifest: Path
    report: Path
    samples: int
    bad: int
    data_hash: str


def ingest(data: DataParams, cfg: IngestParams, root: Path, manifest_path: Path, report_path: Path,
           seed: int, hasher: FileHasher | None = None, real_only: bool = False) -> IngestResult:
    """Build the manifest of the dataset at `root`.

    Every unusable input (missing, zero-byte, unreadable, corrupt, outside the root, a duplicate) becomes a row of
    the report with its reason; the stage fails only when more than `cfg.max_bad_share` of the samples are bad,
    and writes the report first so the user can see which. Official splits are kept; the other samples are split
    by identity cluster (connected components over the persons each sample shows; into train and val only when
    the dataset has an official test set). The manifest's `identity` is the cluster's name, `persons` the list.

    Args:
        data: Dataset name, adapter and adapter options.
        cfg: Split shares and bad-input tolerance.
        root: Dataset root.
        manifest_path: Where to write the parquet manifest.
        report_path: Where to write the JSON report.
        seed: Split seed.
        hasher: The project's memo of file contents (`project_hasher`): a rerun on an unchanged tree then reads
            no file, only stats them; None reads every file.
        real_only: Every model trains `train_on: real_only`: a dataset without fakes is accepted (and said so).
    """
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}",
                        "run `dfd demo-data`, or point data.root in params.yaml at your dataset")
    # The manifest and the report must describe the same attempt: a failed ingest removes the previous manifest
    # (a later stage or `register` would otherwise use, and tag, data that is no longer what the report says).
    manifest_path.unlink(missing_ok=True)
    report_path.unlink(missing_ok=True)  # if even the failure report cannot be written (a full disk), none is left
    report: dict = {"dataset": data.name, "status": "failed"}
    try:
        return _ingest(data, cfg, root, manifest_path, report_path, seed, report, hasher, real_only)
    except DataError as exc:
        report.update(status="failed", error=str(exc))
        write_json(report_path, report)
        raise


def _no_match_hint(data: DataParams) -> str:
    if data.adapter == "ffpp":
        return (f"no file matched the filters data.compression={data.compression!r} and data.methods="
                f"{data.methods or 'all'}; check them against the folders under manipulated_sequences/")
    return f"check data.root and data.adapter={data.adapter!r}"


def _ingest(data: DataParams, cfg: IngestParams, root: Path, manifest_path: Path, report_path: Path, seed: int,
            report: dict, hasher: FileHasher | None, real_only: bool = False) -> IngestResult:
    checked = validate(root, data, hasher=hasher, real_only=real_only)
    report.update(checked.to_dict())
    if not checked.good and not checked.bad:
        raise DataError(f"no samples found in {root}", _no_match_hint(data))
    if not checked.good:
        raise DataError(f"no usable samples in {root}: all {len(checked.bad)} files are bad", f"see {report_path}")
    df = pd.DataFrame([{"sample_id": sample_id(data.name, c.rel_path), "dataset": data.name, "path": c.rel_path,
                        "media": media_kind(c.rel_path), "label": c.label, "method": c.method,
                        "persons": list(c.persons), "official_split": c.split} for c in checked.good])
    df["identity"] = cluster_names(df["persons"].tolist(), df["sample_id"].tolist())
    official = df["official_split"].notna()
    has_official_test = (df.loc[official, "official_split"] == "test").any()
    unsplit = df.loc[~official, "identity"].tolist()
    splits = assign_splits(unsplit, cfg.val_share, 0.0 if has_official_test else cfg.test_share, seed)
    df["split"] = df["official_split"].where(official, df["identity"].map(splits))
    df = df.drop(columns="official_split")
    report["per_split"] = {s: dict(Counter(df.loc[df["split"] == s, "label"].map({0: "real", 1: "fake"})))
                           for s in SPLITS}
    report["identities"] = {s: int(df.loc[df["split"] == s, "identity"].nunique()) for s in SPLITS}
    report.update(cluster_report(df))
    report["official_splits"] = int(official.sum())
    if checked.bad_share > cfg.max_bad_share:
        raise DataError(f"{len(checked.bad)} of {len(checked.bad) + len(checked.good)} samples in {root} are "
                        f"unusable ({checked.bad_share:.0%} > ingest.max_bad_share={cfg.max_bad_share:.0%})",
                        f"see the reasons in {report_path}")
    for label, name in ((0, "real"), (1, "fake")):
        if label == 1 and real_only and not (df["label"] == 1).any():
            # A team's new footage is mostly real: real-only models (SBI) train on it alone.
            report["reals_only"] = "no fake samples: accepted, every model trains real_only"
            continue
        if (df["label"] == label).sum() < cfg.min_per_class:
            hint = " (or train every model `train_on: real_only`)" if label == 1 else ""
            raise DataError(f"only {(df['label'] == label).sum()} usable {name} samples in {root}",
                            f"ingest.min_per_class is {cfg.min_per_class}{hint}")
    conflicts = [e for e in checked.errors if "labelled both" in e]
    if conflicts:
        raise DataError(conflicts[0], f"fix the labels; see {report_path}")
    write_manifest(df, manifest_path)
    report["status"] = "ok"
    write_json(report_path, report)  # after the manifest: an "ok" report always has its manifest beside it
    return IngestResult(manifest_path, report_path, len(df), len(checked.bad), checked.data_hash)


def cluster_report(df: pd.DataFrame) -> dict:
    """Identity clusters per split and class, the largest cluster's share, clusters that straddle splits.

    A cluster straddles splits only where a dataset's official split cuts it (Celeb-DF's test list shares
    celebrities with the rest): said here, since the test is then not identity-disjoint from training.
    """
    per = {s: {"all": int(df.loc[df["split"] == s, "identity"].nunique()),
               **{name: int(df.loc[(df["split"] == s) & (df["label"] == label), "identity"].nunique())
                  for label, name in ((0, "real"), (1, "fake"))}} for s in SPLITS}
    sizes = df["identity"].value_counts()
    straddling = int((df.groupby("identity")["split"].nunique() > 1).sum())
    return {"split_scheme": SPLIT_SCHEME, "clusters": per, "clusters_total": len(sizes),
            "largest_cluster_share": round(float(sizes.iloc[0]) / len(df), 4) if len(df) else 0.0,
            "clusters_straddling_splits": straddling}


def run(params: Params, layout: Layout) -> IngestResult:
    """The stage as `dfd stage ingest` and the flow call it."""
    return ingest(params.data, params.ingest, layout.resolve(params.data.root), layout.manifest,
                  layout.ingest_report, params.train.seed, project_hasher(layout.artifacts), all_real_only(params))


def all_real_only(params: Params) -> bool:
    """Whether every model trains `train_on: real_only` (then a training set without fakes is usable)."""
    return all(m.train_on == "real_only" for m in params.models.values())
