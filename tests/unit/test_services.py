"""Real services on loopback: an `mlflow server` process (alerts: tests/operations/test_alerts.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfd.platform.errors import DfdError
from dfd.platform.tracking import Tracker
from tests.helpers import PROJECT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow/start_server.sh` on a free loopback port, with a sqlite backend and local artifacts."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp / "art"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # Its log goes to a file: a pipe nobody reads fills up (64 KB of access lines) and blocks the server mid-request.
    log_path = tmp / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(["bash", str(PROJECT / "mlflow" / "start_server.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow server exited: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer /health within 120 s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # the whole group: the server's workers too
        proc.wait(timeout=30)
        log.close()


def test_tracker_against_a_real_server(mlflow_server: str, tmp_path: Path) -> None:
    tracker = Tracker(mlflow_server, "server-test")
    with tracker.run("parent") as parent, tracker.run("child", parent) as child:
        tracker.log_params(child, {"train": {"lr": 0.1}})
        tracker.log_metrics(child, {"val": {"auc": 0.9}}, step=0)
        report = tmp_path / "report.json"
        report.write_text("{}")
        tracker.log_artifact(child, report)
    run = tracker.client.get_run(child)
    assert run.data.params["train.lr"] == "0.1" and run.data.metrics["val.auc"] == 0.9
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
    assert [a.path for a in tracker.client.list_artifacts(child)] == ["report.json"]


def test_racing_promotions_against_a_real_server(mlflow_server: str) -> None:
    from tests.flows.test_register_gate import race_promotions

    # No lock file on a server: the process-wide lock, and the re-read after each move, keep one production.
    race_promotions(mlflow_server, "race-model", None)


def test_system_metrics_are_sampled_into_the_run(mlflow_server: str) -> None:
    tracker = Tracker(mlflow_server, "server-test")
    with tracker.run("busy") as rid, tracker.system_metrics(rid, interval_s=0.5):
        deadline = time.time() + 2.5
        while time.time() < deadline:
            sum(i * i for i in range(10_000))
    metrics = tracker.client.get_run(rid).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
    assert any(k.startswith("system/system_memory_usage") for k in metrics)


def test_failed_body_marks_the_run_failed(mlflow_server: str) -> None:
    tracker = Tracker(mlflow_server, "server-test")
    with pytest.raises(RuntimeError), tracker.run("doomed") as rid:
        raise RuntimeError("boom")
    assert tracker.client.get_run(rid).info.status == "FAILED"


def test_unreachable_server_is_a_clear_error_in_seconds() -> None:
    start = time.time()
    with pytest.raises(DfdError, match="unreachable"):
        Tracker(f"http://127.0.0.1:{_free_port()}", "x")
    assert time.time() - start < 30
