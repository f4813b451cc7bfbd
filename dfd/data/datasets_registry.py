"""`dfd dataset add`: put a dataset folder under DVC and make it the pipeline's dataset in params.yaml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from dfd.data.adapters import get_adapter
from dfd.data.provenance import tracked_hash
from dfd.platform.config import DataParams
from dfd.platform.errors import DataError

#: Where `dfd dataset add` puts datasets: the project's .gitignore ignores `data/` but keeps the `.dvc` files here
#: visible to git (DVC refuses to write a `.dvc` file that git ignores).
DATASETS_DIR = Path("data") / "raw"
#: Link types for a DVC cache on another disk: reflink where the filesystem can, else hardlink (same filesystem),
#: else symlink (across filesystems: the workspace then holds only links, the bytes stay on the big disk).
EXTERNAL_CACHE_TYPES = "reflink,hardlink,symlink"


def dvc_executable() -> str:
    """The `dvc` beside the running interpreter (`.venv/bin/dvc` when `.venv/bin/dfd` runs), else the one on PATH.

    `.venv/bin/dfd` is the README's way to call the CLI, without activating the environment: PATH may then lack
    `.venv/bin`, yet `dvc` was installed there with dfd.
    """
    beside = Path(sys.executable).parent / ("dvc.exe" if os.name == "nt" else "dvc")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise DataError(f"`dvc` is neither beside {sys.executable} nor on PATH",
                        "pip install dvc into the environment that runs dfd")
    return found


def _dvc(args: list[str], cwd: Path) -> str:
    res = subprocess.run([dvc_executable(), *args], cwd=cwd, capture_output=True, text=True)  # hours at 470 GB
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr.strip() or res.stdout.strip()).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        raise DataError(f"`dvc {' '.join(args)}` failed: {(errors or lines or ['no output'])[-1]}")
    return res.stdout


def _inside(path: Path, project: Path) -> Path | None:
    try:
        return path.relative_to(project)
    except ValueError:
        return None


def _bring_in(root: Path, name: str, project: Path, move: bool, cache_dir: Path | None) -> tuple[Path, list[str]]:
    """Where a dataset outside the project will live in it (`data/raw/<name>`), and the `dvc add` arguments.

    `move`: the folder is moved in (a rename on the same filesystem; across disks a copy, then the original goes).
    Otherwise DVC copies it into its cache once (`dvc add SRC -o data/raw/<name>`) and links it into the
    workspace; with `cache_dir` that cache is first set on the dataset's disk (`.dvc/config.local`: a path of
    this machine), so the project's disk holds only links.
    """
    dest = DATASETS_DIR / name
    if (project / dest).exists():
        raise DataError(f"{project / dest} already exists", "choose another --name, or add that folder instead")
    (project / dest).parent.mkdir(parents=True, exist_ok=True)
    if move:
        shutil.move(str(root), str(project / dest))  # the user asked for it: the only case we take their folder
        return dest, ["add", dest.as_posix()]
    if cache_dir is not None:
        _dvc(["cache", "dir", "--local", str(cache_dir.resolve())], project)
        _dvc(["config", "--local", "cache.type", EXTERNAL_CACHE_TYPES], project)
    return dest, ["add", str(root), "-o", dest.as_posix()]


def add_dataset(path: Path, name: str, adapter: str, params_file: Path, push: bool = False, move: bool = False,
                cache_dir: Path | None = None) -> dict[str, Any]:
    """Track `path` with DVC (`dvc add`), optionally push it, and set `data.name/root/adapter` in `params_file`.

    A folder inside the project is added where it is (keep it under `data/raw/`: elsewhere under `data/` git would
    ignore its `.dvc` file). A folder outside (another disk) comes in as `data/raw/<name>`: copied into DVC's cache
    and linked (`cache_dir` puts that cache on the dataset's disk), or moved in with `move`.
    The params file is edited in place with its comments kept (ruamel round trip).

    Returns:
        The `.dvc` file, the dataset's DVC hash, and the values written.
    """
    from ruamel.yaml import YAML

    root = path.resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {path}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise DataError(f"bad dataset name {name!r}", "use letters, digits, '.', '_' and '-'")
    project = params_file.resolve().parent
    if not (project / ".dvc").is_dir():
        raise DataError(f"{project} is not a DVC project (no .dvc/)", "run dfd from the project's root")
    next(iter(get_adapter(adapter)(root, DataParams(adapter=adapter))), None)  # fails early on a wrong layout
    rel = _inside(root, project)
    if rel is not None and (move or cache_dir is not None):
        raise DataError(f"{path} is already inside the project", "--move and --cache-dir are for folders outside it")
    if rel is None:
        rel, add_args = _bring_in(root, name, project, move, cache_dir)
    else:
        add_args = ["add", rel.as_posix()]
    try:
        _dvc(add_args, project)
    except DataError as exc:
        if "git-ignored" in exc.message:  # DVC must be able to commit the .dvc file: only data/raw/ allows it
            raise DataError(exc.message, f"move the folder under {DATASETS_DIR}/, or add it from outside the "
                            "project (it then comes in as data/raw/<name>)") from None
        raise
    if push:
        _dvc(["push", f"{rel.as_posix()}.dvc"], project)
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(params_file.read_text())
    doc.setdefault("data", {})
    doc["data"]["name"], doc["data"]["root"], doc["data"]["adapter"] = name, rel.as_posix(), adapter
    with params_file.open("w") as fh:
        yaml.dump(doc, fh)
    return {"dvc_file": f"{rel.as_posix()}.dvc", "data_hash": tracked_hash(project / rel), "name": name,
            "root": rel.as_posix(), "adapter": adapter}


def set_remote(url: str, project: Path, endpoint: str | None = None, name: str = "storage") -> dict[str, Any]:
    """Make `url` (`s3://bucket/prefix`, or any DVC remote URL) the repo's default DVC remote.

    The endpoint (MinIO, or any S3-compatible server; None for AWS) goes into `.dvc/config`, which is committed so
    that a clone pulls from the same place; credentials stay in the environment (`AWS_ACCESS_KEY_ID`, ...).
    """
    _dvc(["remote", "add", "--default", "--force", name, url], project)
    if endpoint:
        _dvc(["remote", "modify", name, "endpointurl", endpoint], project)
    else:
        _dvc(["remote", "modify", "--unset", name, "endpointurl"], project)
    return {"name": name, "url": url, "endpoint": endpoint}
