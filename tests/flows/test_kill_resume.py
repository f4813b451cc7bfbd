"""Killing `dfd stage train` mid-run and running it again resumes from last.pt and ends with the same weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from models.checkpoint import load_checkpoint
from tests.helpers import PROJECT, TINY

pytestmark = pytest.mark.slow


def _epoch_on_disk(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["epoch"])
    except (OSError, RuntimeError, KeyError, EOFError):
        return -1


def test_sigkill_mid_training_then_resume(tiny_project: Path, trained_project: Path) -> None:
    root = tiny_project
    # ingest and faces on the tiny dataset: the session's trained project already ran them, with the same params.
    shutil.copytree(trained_project / "data", root / "data")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    train_cfg = {"epochs": 4, "max_steps_per_epoch": 6, "batch_size": 4}
    runs = {}
    for name in ("straight", "killed"):
        override = root / f"{name}.yaml"
        override.write_text(yaml.safe_dump({"data": {"root": str(root / "raw")}, "artifacts": f"artifacts-{name}",
                                            "train": train_cfg}))
        runs[name] = ["dfd", "--params", str(PROJECT / "params.yaml"), "--override", str(TINY), "--override",
                      str(override), "stage", "train", "--model", "xception"]
    assert subprocess.run(runs["straight"], cwd=root, env=env, capture_output=True, timeout=600).returncode == 0

    last = root / "artifacts-killed" / "models" / "xception" / "last.pt"
    proc = subprocess.Popen(runs["killed"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _epoch_on_disk(last) < 0 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: a lost machine
    proc.wait()
    killed_at = _epoch_on_disk(last)
    assert 0 <= killed_at < 3, "the kill landed after training finished; the run is too fast for this test"

    res = subprocess.run(runs["killed"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming after epoch" in res.stderr
    a = load_checkpoint(root / "artifacts-straight" / "models" / "xception" / "last.pt")
    b = load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
