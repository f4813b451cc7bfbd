"""`dfd dataset add` as the README documents it: `.venv/bin/dfd` without an activated environment, in a clone of
this project (its own .gitignore), for a folder inside it and for one on "another disk" (outside the clone)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfd.data.provenance import dir_hash
from dfd.data.validation import validate
from dfd.platform.config import DataParams
from tests.helpers import PROJECT

DFD = Path(sys.executable).parent / "dfd"
# PATH without the environment's bin folder: the README calls `.venv/bin/dfd` without activating anything.
ENV = {**os.environ, "PATH": "/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
       "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of this project (its committed .gitignore, .dvc/ and params.yaml), not a fresh `git init`."""
    if not (PROJECT / ".git").exists() or shutil.which("git") is None:
        pytest.skip(f"{PROJECT} is not a git checkout (or git is missing): cannot clone the project")
    dest = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{PROJECT}", str(dest)], check=True,
                   capture_output=True, env=ENV)
    return dest


def _add(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DFD), "dataset", "add", *args], cwd=clone, env=ENV, capture_output=True, text=True)


def _git_status(clone: Path) -> set[str]:
    out = subprocess.run(["git", "status", "--porcelain", "-uall"], cwd=clone, capture_output=True, text=True,
                         check=True).stdout
    return {line[3:] for line in out.splitlines()}


def _data(clone: Path) -> dict:
    return yaml.safe_load((clone / "params.yaml").read_text())["data"]


def test_add_inside_the_project_under_its_own_gitignore(clone: Path, tiny_dataset: Path) -> None:
    shutil.copytree(tiny_dataset, clone / "data" / "raw" / "mine")
    res = _add(clone, "data/raw/mine", "--name", "mine")
    assert res.returncode == 0, res.stderr
    assert f"md5: {dir_hash(tiny_dataset)}" in (clone / "data" / "raw" / "mine.dvc").read_text()  # DVC's own hash
    # git sees the .dvc file (to commit) and params.yaml, never the data itself.
    assert _git_status(clone) == {"data/raw/mine.dvc", "params.yaml"}
    assert _data(clone) | {"name": "mine", "root": "data/raw/mine"} == _data(clone)
    assert "# names the manifest" in (clone / "params.yaml").read_text()  # comments kept

    # A folder elsewhere under data/ (ignored by git with its .dvc file): one line that says where to put it.
    shutil.copytree(tiny_dataset, clone / "data" / "elsewhere")
    bad = _add(clone, "data/elsewhere", "--name", "other")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "git-ignored" in bad.stderr and "data/raw/" in bad.stderr


def test_add_from_another_disk_with_the_cache_there(clone: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    shutil.copytree(tiny_dataset, disk / "mine")
    res = _add(clone, str(disk / "mine"), "--name", "mine", "--cache-dir", str(disk / "dvc-cache"))
    assert res.returncode == 0, res.stderr
    assert f"md5: {dir_hash(tiny_dataset)}" in (clone / "data" / "raw" / "mine.dvc").read_text()
    assert _data(clone)["root"] == "data/raw/mine"
    # The bytes are in the cache on the dataset's disk; the workspace holds links to them (hard or symbolic).
    files = [p for p in (clone / "data" / "raw" / "mine").rglob("*") if p.is_file()]
    assert len(files) == sum(1 for p in tiny_dataset.rglob("*") if p.is_file())
    cached = {p.stat().st_ino for p in (disk / "dvc-cache").rglob("*") if p.is_file()}
    assert all(p.is_symlink() or p.stat().st_ino in cached for p in files)
    assert str(disk / "dvc-cache") in (clone / ".dvc" / "config.local").read_text()  # this machine's path only
    assert "dvc-cache" not in (clone / ".dvc" / "config").read_text()
    assert dir_hash(disk / "mine") == dir_hash(tiny_dataset)  # the original is left as it was
    assert _git_status(clone) == {"data/raw/mine.dvc", "params.yaml"}

    # Across filesystems DVC links by symlink (here one filesystem: force it): ingest takes links into the repo's
    # own DVC cache as inside the dataset, and still refuses a link to anywhere else.
    dvc = str(DFD.parent / "dvc")
    for cmd in (["config", "--local", "cache.type", "symlink"], ["checkout", "--relink", "data/raw/mine.dvc"]):
        subprocess.run([dvc, *cmd], cwd=clone, env=ENV, check=True, capture_output=True)
    assert all(p.is_symlink() for p in files)
    outside = next((disk / "mine" / "real").glob("*.png"))
    (clone / "data" / "raw" / "mine" / "real" / "stray.png").symlink_to(outside)
    result = validate(clone / "data" / "raw" / "mine", DataParams(adapter="folder"), progress=False)
    assert result.bad == [{"path": "real/stray.png", "reason": "path escapes the dataset root (symlink?)"}]
    assert len(result.good) == sum(p.suffix in (".png", ".mp4") for p in files)


def test_add_from_outside_with_move(clone: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dataset, tmp_path / "incoming")
    res = _add(clone, str(tmp_path / "incoming"), "--name", "mine", "--move")
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "incoming").exists()
    assert dir_hash(clone / "data" / "raw" / "mine") == dir_hash(tiny_dataset)
    assert f"md5: {dir_hash(tiny_dataset)}" in (clone / "data" / "raw" / "mine.dvc").read_text()
    again = _add(clone, str(tiny_dataset), "--name", "mine", "--move")  # never moved over an existing dataset
    assert again.returncode == 2 and "already exists" in again.stderr and tiny_dataset.is_dir()
