"""Issue 12, item 11: a tracking server that dies mid-run fails the run in seconds with one clear line.

A real `mlflow server` process (mlflow/start_server.sh), SIGKILLed while a client holds an open run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT, wait_until_up

CLIENT = """
import sys
from pathlib import Path
from dfd.platform.config import Params
from dfd.platform.errors import TrackingError
from dfd.platform.tracking import Tracker

tracker = Tracker.from_params(Params(), Path.cwd())
rid = tracker.start_run("doomed")
tracker.log_metrics(rid, {"auc": 0.5})
print("STARTED", flush=True)
sys.stdin.readline()  # the test kills the server now
try:
    tracker.log_metrics(rid, {"auc": 0.6}, step=1)
except TrackingError as exc:
    print("TRACKING-ERROR", exc, flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dead_tracking_server_fails_fast_and_clearly(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "art"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(["bash", str(PROJECT / "mlflow" / "start_server.sh")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", server, what="mlflow server")
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
        client_env.update(MLFLOW_TRACKING_URI=url, PYTHONPATH=str(PROJECT))
        client = subprocess.Popen([sys.executable, "-c", CLIENT], cwd=tmp_path, env=client_env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "STARTED"
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        # MLflow's defaults retry for 13+ minutes; bounded retries (params mlflow.http_*) give up well inside this.
        out, err = client.communicate("go\n", timeout=180)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert client.returncode == 0, err
    assert "TRACKING-ERROR" in out and f"MLflow tracking server at {url} stopped answering" in out, out + err
    assert "mlflow/start_server.sh" in out
