"""S3 everywhere, against a real S3-compatible server on loopback (moto's server mode): the preflight, a DVC remote
(real `dvc push` / `dvc pull` in a fresh clone) and MLflow artifacts through a real `mlflow server`."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from dfd.platform.config import load_params
from dfd.platform.errors import StorageError
from dfd.platform.storage_check import buckets_in_use, check_storage, dvc_remote
from tests.helpers import PROJECT, TINY, wait_until_up

BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DFD_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL",
                                                             "MLFLOW_TRACKING_URI")}
    return {**env, "PATH": f"{BIN}:{env.get('PATH', '')}", "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1",
            **extra}


def _sh(cmd: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=300)


def _bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


def _md5s(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dvc_config(root: Path, url: str, endpoint: str) -> None:
    (root / ".dvc").mkdir(parents=True, exist_ok=True)
    (root / ".dvc" / "config").write_text(f"[core]\n    remote = storage\n['remote \"storage\"']\n    url = {url}\n"
                                          f"    endpointurl = {endpoint}\n")


def test_preflight_finds_and_probes_the_buckets_in_use(s3_server: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DFD_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    _bucket(s3_server, "pre-dvc")
    _bucket(s3_server, "pre-mlflow")
    _dvc_config(tmp_path, "s3://pre-dvc/cache", s3_server)
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://pre-mlflow/artifacts")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    params = load_params(PROJECT / "params.yaml")

    assert dvc_remote(tmp_path) == ("storage", "s3://pre-dvc/cache", s3_server)
    found = check_storage(params, tmp_path)
    assert [(b.uri, b.use) for b in found] == [("s3://pre-dvc/cache", "DVC remote 'storage'"),
                                               ("s3://pre-mlflow/artifacts", "MLflow artifacts destination")]

    (tmp_path / ".dvc" / "config.local").write_text("['remote \"storage\"']\n    url = s3://no-such-bucket/cache\n")
    with pytest.raises(StorageError, match=r"^DVC remote 'storage': cannot write to s3://no-such-bucket/cache"):
        check_storage(params, tmp_path)

    monkeypatch.delenv("MLFLOW_ARTIFACTS_DESTINATION")
    shutil.rmtree(tmp_path / ".dvc")
    assert buckets_in_use(params, tmp_path) == []


def test_unreachable_endpoint_stops_dfd_run_with_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    """`dfd run` exits 2 with one line, before Prefect or any stage starts (no alert: that is the flow's hook)."""
    shutil.copytree(tiny_dataset, tmp_path / "raw")
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(TINY, tmp_path / "tiny.yaml")
    (tmp_path / "local.yaml").write_text("data: {root: raw}\n")
    _dvc_config(tmp_path, "s3://team-dvc/cache", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    start = time.perf_counter()
    res = _sh([str(BIN / "dfd"), "--override", "tiny.yaml", "--override", "local.yaml", "run"], tmp_path,
              AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    elapsed = time.perf_counter() - start
    print(f"unreachable endpoint: dfd run exited {res.returncode} after {elapsed:.1f} s")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and "DVC remote 'storage': cannot write to s3://team-dvc/cache" in lines[0], lines
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "mlflow.db").exists()


def test_dataset_push_to_s3_then_pull_in_a_fresh_clone(s3_server: str, tiny_dataset: Path, tmp_path: Path) -> None:
    _bucket(s3_server, "team-dvc")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(PROJECT / "params.yaml", repo / "params.yaml")
    shutil.copytree(tiny_dataset, repo / "data" / "raw" / "tiny")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert _sh(cmd, repo).returncode == 0
    dfd = str(BIN / "dfd")
    res = _sh([dfd, "dataset", "remote", "s3://team-dvc/cache", "--endpoint", s3_server], repo)
    assert res.returncode == 0, res.stderr
    res = _sh([dfd, "dataset", "add", "data/raw/tiny", "--name", "tiny", "--push"], repo)
    assert res.returncode == 0, res.stderr
    assert _sh(["git", "add", "-A"], repo).returncode == 0
    assert _sh([*git, "commit", "-qm", "tiny dataset on S3"], repo).returncode == 0

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
            .list_objects_v2(Bucket="team-dvc", Prefix="cache/")["Contents"]]
    assert len(keys) == len(_md5s(tiny_dataset)) + 1  # every file, plus the directory listing

    clone = tmp_path / "clone"
    assert _sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path).returncode == 0
    assert not (clone / "data" / "raw" / "tiny").exists()
    res = _sh(["dvc", "pull", "-q"], clone)
    assert res.returncode == 0, res.stderr
    assert _md5s(clone / "data" / "raw" / "tiny") == _md5s(tiny_dataset)


@pytest.mark.slow
def test_mlflow_server_keeps_artifacts_and_models_in_s3(s3_server: str, trained_project: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks import register
    from tests.helpers import tiny_params

    _bucket(s3_server, "team-mlflow")
    port = _free_port()
    # The compose setup: basic auth from docker/mlflow/basic_auth.ini (its user store moved into tmp_path).
    ini = (PROJECT / "docker" / "mlflow" / "basic_auth.ini").read_text().replace(
        "sqlite:////var/lib/mlflow-auth/basic_auth.db", f"sqlite:///{tmp_path / 'auth.db'}")
    (tmp_path / "basic_auth.ini").write_text(ini)
    admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "admin-pw-1234567"}
    # Its log goes to a file: a pipe nobody reads fills up (64 KB of access lines) and blocks the server mid-request.
    server_log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        ["bash", str(PROJECT / "mlflow" / "start_server.sh")], cwd=tmp_path, stdout=server_log,
        stderr=subprocess.STDOUT, text=True,
        env=_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'server.db'}",
                 MLFLOW_ARTIFACTS_DESTINATION="s3://team-mlflow/artifacts", MLFLOW_S3_ENDPOINT_URL=s3_server,
                 MLFLOW_PORT=str(port), MLFLOW_WORKERS="1", MLFLOW_SERVER_EXTRA_ARGS="--app-name basic-auth",
                 MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "basic_auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="csrf-key",
                 MLFLOW_AUTH_ADMIN_USERNAME=admin["MLFLOW_TRACKING_USERNAME"],
                 MLFLOW_AUTH_ADMIN_PASSWORD=admin["MLFLOW_TRACKING_PASSWORD"]))
    url = f"http://127.0.0.1:{port}"
    for name, value in admin.items():
        monkeypatch.setenv(name, value)  # the pipeline logs in as the admin (the compose worker does)
    try:
        wait_until_up(f"{url}/health", server, what="mlflow server")

        root = tmp_path / "project"
        shutil.copytree(trained_project, root)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        params = tiny_params(root)
        layout = Layout.from_params(params, root)
        tracker = Tracker.from_params(params, root)
        assert tracker.tracking_uri == url
        res = register.run(params, layout, tracker)

        keys = [o["Key"] for page in boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
                .get_paginator("list_objects_v2").paginate(Bucket="team-mlflow") for o in page.get("Contents", [])]
        assert any(k.endswith("/MLmodel") for k in keys), keys
        assert sum(k.endswith("best.pt") for k in keys) == len(params.models)
        assert not list((root / "mlruns").glob("**/MLmodel"))  # nothing landed on the client's disk

        mlflow.set_tracking_uri(url)
        model = mlflow.pyfunc.load_model(f"models:/{res.model_name}/{res.version}")
        index = pd.read_parquet(layout.faces_index).head(3)
        crops = np.stack([cv2.cvtColor(cv2.imread(str(layout.faces_index.parent / c)), cv2.COLOR_BGR2RGB)
                          for c in index["crop"]])
        scores = np.asarray(model.predict(crops))
        assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()

        # The compose model server: the read-only user created at start-up, and no S3 keys at all.
        reader = {"MLFLOW_READER_USERNAME": "model-server", "MLFLOW_READER_PASSWORD": "reader-pw-7654321"}
        made = _sh([sys.executable, str(PROJECT / "mlflow" / "create_reader.py")], tmp_path,
                   MLFLOW_TRACKING_URI=url, **admin, **reader)
        assert made.returncode == 0 and "read-only user 'model-server' created" in made.stdout, made.stderr
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", reader["MLFLOW_READER_USERNAME"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", reader["MLFLOW_READER_PASSWORD"])
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # a one-worker server on a busy CI machine
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        from dfd.serving.registry_model import resolve_version
        from mlflow import MlflowClient

        # What the model server does: resolve the alias, then read the version's files through MLflow (one file
        # here: the full load above already proved the folder; this proves the reader's rights without S3 keys).
        assert resolve_version(f"models:/{res.model_name}@{res.alias}", url)[1] == res.version
        client = MlflowClient(url, url)
        source = client.get_model_version_download_uri(res.model_name, res.version).rstrip("/")
        mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/MLmodel", tracking_uri=url,
                                                      dst_path=str(tmp_path / "reader"))
        assert "python_function" in Path(mlmodel).read_text()
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|Permission denied"):
            client.set_registered_model_alias(res.model_name, "production", "1")
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|Permission denied"):
            client.log_metric(res.run_id, "tampered", 1.0)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(MlflowException, match=r"401|Unauthorized|UNAUTHENTICATED"):
            client.get_registered_model(res.model_name)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
