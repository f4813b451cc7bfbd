"""Issue 12, item 12: `dfd run` and `dfd stage faces` stop cleanly on real signals and leave nothing running.

Real processes, real signals, tiny data. A process counts as gone once it no longer exists or is a zombie (the
container's init may reap late).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT, TINY

DROPPED = ("xception", "efficientnet", "sbi")
TRAINERS = 2  # the tiny members left: mesonet and f3net

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux-only")]


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        kids = _children(todo.pop()) - found
        found |= kids
        todo += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _env(project: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PREFECT_HOME": str(project / ".prefect"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for k in ("DFD_PARAMS_OVERRIDE", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(k, None)
    return env


@pytest.fixture
def project(tmp_path: Path, tiny_dataset: Path) -> Path:
    shutil.copytree(tiny_dataset, tmp_path / "data" / "raw" / "demo")
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    # Long enough to be interrupted mid-training: many short epochs, no early stop. Two members train side by side
    # (each one more only delays the moment all have a last.pt on two cores).
    (tmp_path / "long.yaml").write_text(yaml.safe_dump({"train": {"epochs": 500, "early_stop_patience": None},
                                                        "faces": {"workers": 2},
                                                        "models": dict.fromkeys(DROPPED)}))
    return tmp_path


def _start(project: Path, *args: str) -> subprocess.Popen[str]:
    # Output goes to files, not pipes: nobody reads a pipe while dfd runs, and a full one (64 KB of logs from the
    # run or the children that inherit it) would block the writer and stall the test.
    with (project / "dfd.out").open("w") as out, (project / "dfd.err").open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "dfd.cli", "--override", str(TINY), "--override", "long.yaml",
                                 *args], cwd=project, env=_env(project), stdout=out, stderr=err, text=True,
                                start_new_session=True)


def _stderr(project: Path) -> str:
    """What the process started by `_start` wrote to stderr so far."""
    return (project / "dfd.err").read_text(errors="replace")


def _training(proc: subprocess.Popen[str], project: Path) -> set[int]:
    """Wait until every model has finished an epoch (a resumable last.pt), then return the training children."""
    _wait_until(lambda: len(list((project / "artifacts" / "models").glob("*/last.pt"))) == TRAINERS
                or proc.poll() is not None, 400, f"{TRAINERS} last.pt files")
    assert proc.poll() is None, _stderr(project)[-3000:]
    return {p for p in _descendants(proc.pid) if "stage train" in _cmdline(p)}


def test_sigterm_stops_dfd_run_within_seconds_and_leaves_resumable_state(project: Path) -> None:
    proc = _start(project, "run")
    trainers = _training(proc, project)
    everything = _descendants(proc.pid)
    assert len(trainers) == TRAINERS
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=90)  # without the fix it waits for 500 epochs of every model
    err = _stderr(project)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err.split("dfd: interrupted")[-1]
    _wait_until(lambda: not any(_alive(p) for p in everything), 30, "every child process to exit")
    assert not list(Path(tempfile.gettempdir()).glob(f"dfd-train-*-{proc.pid}-*"))
    assert len(list((project / "artifacts" / "models").glob("*/last.pt"))) == TRAINERS
    assert not list((project / "artifacts" / "models").glob("*/*.tmp"))


def test_sigkill_of_dfd_run_leaves_no_child_running(project: Path) -> None:
    proc = _start(project, "run")
    trainers = _training(proc, project)
    everything = _descendants(proc.pid)
    assert trainers and any("uvicorn" in _cmdline(p) for p in everything)  # the temporary Prefect server
    proc.kill()
    proc.wait(timeout=30)
    _wait_until(lambda: not any(_alive(p) for p in everything), 30, "every orphan to exit")


def test_sigkill_of_the_faces_stage_leaves_no_worker(project: Path) -> None:
    subprocess.run([sys.executable, "-m", "dfd.cli", "--override", str(TINY), "stage", "ingest"], cwd=project,
                   env=_env(project), check=True, capture_output=True)
    proc = _start(project, "stage", "faces")
    workers: set[int] = set()

    def spawned() -> bool:
        workers.update(p for p in _children(proc.pid) if "spawn_main" in _cmdline(p))
        return len(workers) >= 2 or proc.poll() is not None

    _wait_until(spawned, 120, "two faces workers")
    assert proc.poll() is None, _stderr(project)[-3000:]
    proc.kill()
    proc.wait(timeout=30)
    _wait_until(lambda: not any(_alive(p) for p in workers), 30, "the orphaned workers to exit")
