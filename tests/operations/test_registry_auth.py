"""The registry's rights against a real `mlflow server --app-name basic-auth` started as the team stack starts it
(mlflow/start_server.sh, docker/mlflow/basic_auth.ini, then the init service's mlflow/create_reader.py): the model
server's read-only login can load `@production` and can create nothing (no registered model, version, alias or
experiment), nor can any other non-admin; the admin (the pipeline) still can."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PROJECT, wait_until_up

ADMIN = ("admin", "admin-pw-1234567")
READER = ("model-server", "reader-pw-7654321")
MODEL = "deepfake-ensemble"
PYFUNC = '''
import mlflow.pyfunc
import numpy as np


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return np.full(len(model_input), 0.25)


mlflow.models.set_model(Constant())
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}", "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The compose MLflow server's setup on loopback: sqlite instead of PostgreSQL, local artifacts instead of S3."""
    tmp = tmp_path_factory.mktemp("registry-auth")
    ini = (PROJECT / "docker" / "mlflow" / "basic_auth.ini").read_text().replace(
        "sqlite:////var/lib/mlflow-auth/basic_auth.db", f"sqlite:///{tmp / 'auth.db'}")
    (tmp / "basic_auth.ini").write_text(ini)
    port = _free_port()
    log = (tmp / "server.log").open("w")  # a file, not a pipe nobody reads (a full pipe blocks the server)
    proc = subprocess.Popen(
        ["bash", str(PROJECT / "mlflow" / "start_server.sh")], cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
        env=_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp / 'server.db'}", MLFLOW_ARTIFACTS_DESTINATION=str(
            tmp / "artifacts"), MLFLOW_PORT=str(port), MLFLOW_WORKERS="1",
            MLFLOW_SERVER_EXTRA_ARGS="--app-name basic-auth", MLFLOW_AUTH_CONFIG_PATH=str(tmp / "basic_auth.ini"),
            MLFLOW_FLASK_SERVER_SECRET_KEY="csrf-key-for-tests", MLFLOW_AUTH_ADMIN_USERNAME=ADMIN[0],
            MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1]))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, what="mlflow server")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _login(monkeypatch: pytest.MonkeyPatch, user: tuple[str, str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # a one-worker server on a busy CI machine


def _init(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROJECT / "mlflow" / "create_reader.py")], capture_output=True,
                          text=True, timeout=300, env=_env(
                              MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME=ADMIN[0],
                              MLFLOW_TRACKING_PASSWORD=ADMIN[1], MLFLOW_READER_USERNAME=READER[0],
                              MLFLOW_READER_PASSWORD=READER[1], MLFLOW_MODEL_NAME=MODEL))


def _refused(call: Any) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"403|PERMISSION_DENIED|Permission denied"):
        call()


@pytest.mark.slow
def test_no_non_admin_creates_anything_and_the_reader_still_loads_production(
        server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pyfunc
    import numpy as np
    from mlflow.server import get_app_client

    import mlflow
    from mlflow import MlflowClient

    made = _init(server)
    assert made.returncode == 0, made.stderr
    assert f"registered model '{MODEL}' created by the admin" in made.stdout
    assert f"'{READER[0]}' may only READ it" in made.stdout

    # The pipeline (admin): an experiment, a run, the model logged and registered as a version of the init's model.
    _login(monkeypatch, ADMIN)
    get_app_client("basic-auth", tracking_uri=server).create_user("analyst", "analyst-pw-123456")
    admin = MlflowClient(server, server)
    exp = admin.create_experiment("deepfake-detection")
    (tmp_path / "model.py").write_text(PYFUNC)
    mlflow.set_tracking_uri(server)
    mlflow.set_registry_uri(server)
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="ensemble", python_model=str(tmp_path / "model.py"),
                                       pip_requirements=[], registered_model_name=MODEL)
    version = str(info.registered_model_version)
    assert version == "1"  # a version of the model the init service created, not a new model
    admin.set_registered_model_alias(MODEL, "production", version)

    # The model server's login: reads and loads @production ...
    _login(monkeypatch, READER)
    reader = MlflowClient(server, server)
    assert reader.get_model_version_by_alias(MODEL, "production").version == version
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@production")
    assert model.predict(np.zeros((3, 2))).tolist() == [0.25, 0.25, 0.25]
    # ... and creates nothing, moves nothing.
    _refused(lambda: reader.create_registered_model("evil-model"))
    _refused(lambda: reader.create_registered_model(MODEL))
    _refused(lambda: reader.create_model_version(MODEL, f"runs:/{run.info.run_id}/ensemble", run.info.run_id))
    _refused(lambda: reader.set_registered_model_alias(MODEL, "production", version))
    _refused(lambda: reader.set_registered_model_alias(MODEL, "evil", version))
    _refused(lambda: reader.create_experiment("evil-experiment"))
    _refused(lambda: reader.create_run(exp))
    assert [m.name for m in reader.search_registered_models()] == [MODEL]
    # Any other non-admin with no grant at all: the same.
    _login(monkeypatch, ("analyst", "analyst-pw-123456"))
    analyst = MlflowClient(server, server)
    _refused(lambda: analyst.create_registered_model("analyst-model"))
    _refused(lambda: analyst.create_experiment("analyst-experiment"))

    # The init service again (a restart of the stack): idempotent; the reader keeps READ and only READ.
    _login(monkeypatch, ADMIN)
    again = _init(server)
    assert again.returncode == 0 and f"registered model '{MODEL}' existed" in again.stdout, again.stderr
    assert MlflowClient(server, server).create_experiment("admin-still-creates")
    perm = get_app_client("basic-auth", tracking_uri=server).get_user_permission(READER[0], "registered_model", MODEL)
    assert "READ" in str(perm.__dict__) and "MANAGE" not in str(perm.__dict__)
