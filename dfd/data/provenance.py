"""Provenance: the git commit, the DVC-style hash of a dataset, and the params hash recorded on every run."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from dfd.platform.config import Params


def git_commit(cwd: Path | None = None) -> str:
    """The current commit (with `-dirty` when the tree has changes), or 'unknown' outside a git repo."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5s(root: Path) -> dict[str, str]:
    """md5 of every file under `root`, by path relative to it (one read of the dataset, shared by checks)."""
    return {p.relative_to(root).as_posix(): _file_md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tracked_hash(root: Path) -> str | None:
    """The hash recorded in `<root>.dvc` when DVC tracks the directory, else None."""
    dvc_file = root.with_name(root.name + ".dvc")
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"])
    return None


def dir_hash(root: Path, md5s: dict[str, str] | None = None) -> str:
    """The hash DVC gives a directory (`md5` of its sorted file listing, with the `.dir` suffix).

    When the directory is tracked by a `<root>.dvc` file, its recorded hash is returned as is.
    """
    tracked = tracked_hash(root)
    if tracked:
        return tracked
    md5s = md5s if md5s is not None else file_md5s(root)
    entries = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(md5s.items())]
    blob = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(blob).hexdigest() + ".dir"


def run_lineage(params: Params, ingest_report: Path, root: Path) -> dict[str, str]:
    """The provenance every pipeline run and model version carries, whichever path (flow or `dvc repro`) ran it.

    Args:
        params: The resolved params (hashed).
        ingest_report: The ingest stage's report, which holds the DVC hash of the data it read.
        root: The project root (its git commit).
    """
    lineage = {"git_commit": git_commit(root), "params_hash": params.digest(), "dataset": params.data.name}
    if ingest_report.is_file():
        lineage["dvc_data_hash"] = str(json.loads(ingest_report.read_text()).get("data_hash", "unknown"))
    return lineage
