"""Issue 12, item 9: a read-only output folder and a full disk give one line naming the path, and no stray files.

Real file systems, not mocks: a full disk is a 64 KiB tmpfs filled up (mounted in a private user+mount namespace
with `unshare`, no root needed), and a read-only folder is enforced by running without CAP_DAC_OVERRIDE (`setpriv`),
since the tests may run as root, which ignores permissions.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT

DFD = str(Path(sys.executable).parent / "dfd")


def _can(cmd: list[str]) -> bool:
    return shutil.which(cmd[0]) is not None and subprocess.run(cmd, capture_output=True).returncode == 0


needs_unshare = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can(["unshare", "-rm", "true"]),
                                   reason="needs Linux user namespaces (unshare -rm) to mount a small tmpfs")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("DFD_PARAMS_OVERRIDE", None)
    return env


def _on_full_disk(folder: Path, command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `command` with `folder` a full 64 KiB tmpfs."""
    folder.mkdir(parents=True, exist_ok=True)
    script = (f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(folder))} && "
              f"(dd if=/dev/zero of={shlex.quote(str(folder / 'fill'))} bs=4k 2>/dev/null; true) && "
              f"{command}; rc=$?; find {shlex.quote(str(folder))} -name '*.tmp'; exit $rc")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.startswith("dfd: error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


@needs_unshare
def test_full_disk_names_the_file_and_leaves_no_temp_file(tiny_project: Path) -> None:
    (tiny_project / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    (tiny_project / "o.yaml").write_text("data: {root: raw, workdir: full/data}\n")
    res = _on_full_disk(tiny_project / "full", f"{DFD} --override o.yaml stage ingest", tiny_project)
    line = _error_line(res)
    assert "no space left" in line and str(tiny_project / "full" / "data" / "manifests") in line, line
    assert ".tmp" not in res.stdout  # `find -name '*.tmp'` printed nothing


@needs_unshare
def test_checkpoint_on_a_full_disk_is_a_clear_oserror_without_last_tmp(tmp_path: Path) -> None:
    # torch reports a full disk as "unexpected pos ..."; the save must name the file and remove its temp file.
    code = ("import errno, sys, torch; from pathlib import Path; from tasks.train import _save\n"
            "p = Path(sys.argv[1]) / 'last.pt'\n"
            "try:\n    _save(p, {'w': torch.zeros(100_000)})\n"
            "except OSError as e:\n    print('ERRNO', e.errno == errno.ENOSPC, e.filename == str(p))\n")
    (tmp_path / "save.py").write_text(code)
    res = _on_full_disk(tmp_path / "full", f"{sys.executable} save.py full", tmp_path)
    assert "ERRNO True True" in res.stdout, res.stdout + res.stderr
    assert "last.tmp" not in res.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("setpriv") is None,
                    reason="needs setpriv to drop CAP_DAC_OVERRIDE")
def test_read_only_output_folder_is_one_line_naming_it(tiny_project: Path) -> None:
    (tiny_project / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    (tiny_project / "o.yaml").write_text("data: {root: raw}\n")
    manifests = tiny_project / "data" / "manifests"
    manifests.mkdir(parents=True)
    manifests.chmod(0o555)
    try:
        res = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", DFD, "--override",
                              "o.yaml", "stage", "ingest"], cwd=tiny_project, env=_env(), capture_output=True,
                             text=True, timeout=300)
    finally:
        manifests.chmod(0o755)
    line = _error_line(res)
    assert "permission denied" in line and str(manifests) in line and "writable" in line, line
    assert list(manifests.iterdir()) == []
