"""`dfd --version`: the package version and the git commit of the checkout it runs from."""

from __future__ import annotations

import importlib.metadata
import subprocess

import pytest

from dfd.cli import main
from tests.helpers import PROJECT


def test_version_names_package_and_commit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True).stdout.strip()
    assert out.startswith(f"dfd {importlib.metadata.version('dfd')} (git {head}")  # `-dirty` with local changes
