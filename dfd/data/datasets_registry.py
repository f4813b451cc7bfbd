"""`dfd dataset add`: put a dataset folder under DVC and make it the pipeline's dataset in params.yaml."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dfd.data.adapters import get_adapter
from dfd.data.provenance import tracked_hash
from dfd.platform.config import DataParams
from dfd.platform.errors import DataError


def _dvc(args: list[str], cwd: Path) -> str:
    try:
        res = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        raise DataError("the `dvc` command is not on PATH", "activate the project's environment") from None
    if res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise DataError(f"`dvc {' '.join(args)}` failed: {last[0]}")
    return res.stdout


def add_dataset(path: Path, name: str, adapter: str, params_file: Path, push: bool = False) -> dict[str, Any]:
    """Track `path` with DVC (`dvc add`), optionally push it, and set `data.name/root/adapter` in `params_file`.

    The params file is edited in place with its comments kept (ruamel round trip).

    Returns:
        The `.dvc` file, the dataset's DVC hash, and the values written.
    """
    from ruamel.yaml import YAML

    root = path.resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {path}")
    project = params_file.resolve().parent
    try:
        rel = root.relative_to(project)
    except ValueError:
        raise DataError(f"{path} is outside the project {project}", "DVC tracks folders inside the repo") from None
    next(iter(get_adapter(adapter)(root, DataParams(adapter=adapter))), None)  # fails early on a wrong layout
    _dvc(["add", rel.as_posix()], project)
    if push:
        _dvc(["push", f"{rel.as_posix()}.dvc"], project)
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(params_file.read_text())
    doc.setdefault("data", {})
    doc["data"]["name"], doc["data"]["root"], doc["data"]["adapter"] = name, rel.as_posix(), adapter
    with params_file.open("w") as fh:
        yaml.dump(doc, fh)
    return {"dvc_file": f"{rel.as_posix()}.dvc", "data_hash": tracked_hash(root), "name": name,
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
