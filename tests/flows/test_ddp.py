"""Data-parallel training under torchrun: two CPU processes (gloo) against one process accumulating two steps."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from models import create_model
from models.checkpoint import load_checkpoint
from tests.helpers import PROJECT, TINY

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_agree_with_one(tiny_project: Path, trained_project: Path) -> None:
    root = tiny_project
    # ingest and faces on the tiny dataset: the session's trained project already ran them, with the same params.
    shutil.copytree(trained_project / "data", root / "data")
    # Whole global batches of 2 x 4 only: a last, partial one is split differently by the two ranks (2 + 2) than by
    # the single process's accumulation (one micro-batch of 4), so it would change the update, not test DDP.
    train_crops = int((pd.read_parquet(root / "data" / "faces" / "index.parquet")["split"] == "train").sum())
    assert train_crops >= 8
    common = {"data": {"root": str(root / "raw")},
              "models": {"mesonet": {"input_size": 64, "kwargs": {"dropout": 0.0}}},
              "train": {"epochs": 2, "max_steps_per_epoch": train_crops // 8, "augment": [], "balanced_sampling": False,
                        "grad_clip": None, "lr": 0.05, "warmup_epochs": 0, "optimizer": "sgd"}}
    runs = {"ddp": (2, 1), "single": (1, 2)}  # (processes, accumulation steps): the same global batch of 2 x 4
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    for name, (procs, accum) in runs.items():
        override = root / f"{name}.yaml"
        override.write_text(yaml.safe_dump({**common, "artifacts": f"artifacts-{name}",
                                            "train": {**common["train"], "batch_size": 4, "grad_accum_steps": accum}}))
        cli = ["-m", "dfd.cli", "--params", str(PROJECT / "params.yaml"), "--override", str(TINY), "--override",
               str(override), "stage", "train", "--model", "mesonet"]
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
                    "--master_port", str(_free_port())] if procs > 1 else []
        cmd = [sys.executable, *launcher, *cli]
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    ddp = load_checkpoint(root / "artifacts-ddp" / "models" / "mesonet" / "last.pt")
    single = load_checkpoint(root / "artifacts-single" / "models" / "mesonet" / "last.pt")
    assert ddp["epoch"] == single["epoch"] == 1 and ddp["step"] == single["step"] > 0
    # Rank r of global batch k holds the same 4 samples as micro-batch r of the single process's accumulation
    # step k, so batch norm sees the same groups too: the trained weights agree to float rounding. (Batch norm's
    # running statistics are buffers: DDP keeps rank 0's, so they are left out.)
    params_only = {n for n, _ in create_model("mesonet", input_size=64).named_parameters()}
    for key in params_only:
        assert torch.allclose(ddp["state_dict"][key], single["state_dict"][key], atol=1e-5), key
    assert (root / "artifacts-ddp" / "models" / "mesonet" / "predictions.parquet").is_file()
