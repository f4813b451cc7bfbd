"""Issue 12, items 2, 3 and 9: nothing silently dropped or faked, no empty MLflow runs, no tracebacks for users."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfd.data.provenance import git_commit, run_lineage
from dfd.platform.config import Params
from dfd.platform.errors import ConfigError
from dfd.platform.files import write_json
from dfd.platform.tracking import Tracker
from models import create_model
from tests.helpers import PROJECT


def _dfd(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for k in ("DFD_PARAMS_OVERRIDE", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return subprocess.run(["dfd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_weights_matching_nothing_fail_and_partial_loads_are_counted(tmp_path: Path) -> None:
    from models.weights import load_pretrained

    other = tmp_path / "other.pt"
    torch.save(create_model("mesonet", input_size=64).state_dict(), other)
    with pytest.raises(ConfigError, match=r"match only 0% .*\(0 tensors matched, \d+ missing, \d+ unexpected"):
        load_pretrained(create_model("xception", input_size=64, width=0.125), str(other))
    # The same backbone with another head (one class more): most of it loads, and the counts say what did not.
    source = create_model("xception", input_size=64, width=0.125)
    state = {("module." + k): v for k, v in source.state_dict().items()}  # a DataParallel-saved checkpoint
    head = [k for k, v in state.items() if v.dim() == 2][-1]
    state[head] = torch.zeros(2, state[head].shape[1])
    torch.save({"state_dict": state}, tmp_path / "ddp.pt")
    counts = load_pretrained(create_model("xception", input_size=64, width=0.125), str(tmp_path / "ddp.pt"))
    assert counts is not None
    assert counts["shape_mismatch"] == 1 and counts["unexpected"] == 0 and counts["missing"] == 1
    assert 0.5 < counts["loaded_share"] < 1.0
    (tmp_path / "torn.pt").write_bytes((tmp_path / "ddp.pt").read_bytes()[:100])
    with pytest.raises(ConfigError, match="cannot read pretrained weights"):
        load_pretrained(source, str(tmp_path / "torn.pt"))


def test_nan_metrics_are_logged_not_dropped(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "faults", tmp_path / "mlruns")
    rid = tracker.start_run("nan")
    tracker.log_metrics(rid, {"auc": float("nan"), "eer": 0.1, "ece": None, "loss": float("inf"), "note": "x"})
    logged = tracker.client.get_run(rid).data.metrics
    assert math.isnan(logged["auc"]) and math.isnan(logged["ece"])
    assert logged["loss"] >= 1e308  # MLflow stores inf as the largest float
    assert logged["eer"] == pytest.approx(0.1) and "note" not in logged


def test_provenance_outside_git_is_an_explicit_reason_not_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "not-a-git-repo"
    report = tmp_path / "ingest_report.json"
    write_json(report, {"status": "ok", "data_hash": "abc.dir"})
    lineage = run_lineage(Params(), report, tmp_path)
    assert lineage["git_commit"] == "not-a-git-repo" and "not a git repository" in lineage["git_commit_reason"]
    assert "unknown" not in lineage.values()
    write_json(report, {"status": "ok"})
    with pytest.raises(Exception, match="holds no data_hash"):
        run_lineage(Params(), report, tmp_path)
    assert len(git_commit(PROJECT).split("-")[0]) == 40


def test_register_without_upstream_outputs_is_one_line_and_opens_no_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    for _ in range(2):
        res = _dfd(["stage", "register"], tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        line = [ln for ln in res.stderr.splitlines() if ln.startswith("dfd: error:")]
        assert len(line) == 1 and "not found" in line[0] and "dfd stage" in line[0], res.stderr
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "deepfake-detection")
    assert tracker.client.search_runs([tracker.experiment_id]) == []  # no FAILED run per attempt
