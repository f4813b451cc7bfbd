"""The manifest, the spine of the pipeline: one row per sample, identity-disjoint splits, parquet on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from dfd.platform.errors import StageError
from dfd.platform.files import write_parquet

COLUMNS = ["sample_id", "dataset", "path", "media", "label", "method", "identity", "persons", "split"]
SPLITS = ("train", "val", "test")
#: How samples are split, recorded in the ingest report and on every model version: "persons-1" splits by identity
#: clusters (connected components over the persons each sample shows, `dfd.data.identity`); before it, one identity
#: string per sample was hashed. Models trained under different schemes may have trained on each other's test
#: samples, so the champion comparison between them is skipped (tasks/register.py).
SPLIT_SCHEME = "persons-1"
SPLIT_SCHEME_TAG = "split_scheme"  # the model version's tag that records it


def sample_id(dataset: str, rel_path: str) -> str:
    """A stable id from the dataset name and the sample's path relative to the dataset root."""
    return hashlib.sha1(f"{dataset}/{rel_path}".encode()).hexdigest()[:16]


def _unit_hash(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(identities: list[str], val_share: float, test_share: float, seed: int) -> dict[str, str]:
    """Map each identity cluster (its name, see `dfd.data.identity.cluster_names`) to a split.

    Each cluster's split comes from a hash of (seed, its name) alone, so adding clusters later never moves existing
    ones. New data that joins two clusters (a fake of two people seen apart so far) makes one cluster named by the
    smaller name: its samples all take that name's split, so the samples of the other cluster move if its split
    differed (docs/concepts/identity-splits.md). When hashing leaves a split empty (a handful of clusters), the
    clusters are instead ranked by the same hash and cut by share, which guarantees every split at least one.

    Args:
        identities: The cluster names (groups that must never straddle splits).
        val_share: Share of identities for validation.
        test_share: Share of identities for testing.
        seed: Split seed.
    """
    unique = sorted(set(identities))
    u = {i: _unit_hash(seed, i) for i in unique}
    split = {i: "test" if u[i] < test_share else "val" if u[i] < test_share + val_share else "train" for i in unique}
    wanted = [s for s, share in (("val", val_share), ("test", test_share)) if share > 0] + ["train"]
    if len(unique) >= len(wanted) and not all(s in split.values() for s in wanted):
        ranked = sorted(unique, key=u.__getitem__)
        n = len(ranked)
        n_test = max(1, round(n * test_share)) if test_share > 0 else 0
        n_val = max(1, round(n * val_share)) if val_share > 0 else 0
        split = {i: "test" if k < n_test else "val" if k < n_test + n_val else "train" for k, i in enumerate(ranked)}
    return split


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Write the manifest with its columns in the canonical order."""
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"manifest lacks columns {sorted(missing)}")
    write_parquet(df[COLUMNS].sort_values("sample_id").reset_index(drop=True), path)


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest, with a clear error when the ingest stage has not produced it."""
    if not path.is_file():
        raise StageError(f"manifest not found: {path}", "run the ingest stage first (`dfd stage ingest`)")
    return pd.read_parquet(path)
