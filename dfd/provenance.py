"""Provenance: the git commit, the DVC-style hash of a dataset, and the params hash recorded on every run."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml


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


def dir_hash(root: Path) -> str:
    """The hash DVC gives a directory (`md5` of its sorted file listing, with the `.dir` suffix).

    When the directory is tracked by a `<root>.dvc` file, its recorded hash is returned as is.
    """
    dvc_file = root.with_name(root.name + ".dvc")
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"])
    entries = [{"md5": _file_md5(p), "relpath": p.relative_to(root).as_posix()}
               for p in sorted(root.rglob("*")) if p.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    blob = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(blob).hexdigest() + ".dir"
