"""Deployments: prefect.yaml agrees with params, and `dfd deploy` against a real `prefect server start` and a real
`prefect worker start` registers a weekly schedule and runs the pipeline on tiny data through the worker. The server
requires an API auth string, as in the compose stack: the CLI and the worker send it."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from dfd.platform.config import load_params
from flows.deploy import prefect_yaml
from tests.helpers import PROJECT, TINY

PREFECT = Path(sys.executable).parent / "prefect"
AUTH = "dfd:prefect-auth-test-secret"  # PREFECT_SERVER_API_AUTH_STRING of the test server
# A test worker polls its pool every second, not every 10 s (the default): a poll that comes before the pool is
# synced would otherwise leave the queued run waiting 10 s.
WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict[str, Any] | None = None, auth: str | None = AUTH) -> Any:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers=headers, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_prefect_yaml_is_what_params_yaml_generates() -> None:
    """`prefect deploy --all` and `dfd deploy` register the same thing: regenerate with `dfd deploy
    --write-prefect-yaml` when this fails."""
    committed = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    generated = yaml.safe_load(prefect_yaml(load_params(PROJECT / "params.yaml")))
    committed.pop("prefect-version"), generated.pop("prefect-version")
    assert committed == generated
    weekly = committed["deployments"][0]
    assert weekly["schedules"] == [{"cron": "0 3 * * 1", "timezone": "UTC"}]  # the documented default


@pytest.mark.parametrize(("schedule", "match"), [({"cron": "0 3 * *"}, "cron"),
                                                 ({"timezone": "Mars/Olympus"}, "time zone")])
def test_a_bad_schedule_is_one_line_before_any_server(tmp_path: Path, schedule: dict[str, str], match: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dfd.cli import main

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"schedule": schedule}))
    assert main(["--params", str(PROJECT / "params.yaml"), "--override", str(tmp_path / "p.yaml"), "deploy"]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` on a free loopback port, its database under a temporary PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)], stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
        env=_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false",
                 PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2", PREFECT_SERVER_API_AUTH_STRING=AUTH))
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 180
        while True:
            try:
                _api(url, "/health")
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
                time.sleep(1)
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.mark.slow
def test_the_prefect_api_refuses_clients_without_the_auth_string(prefect_api: str) -> None:
    """Who reaches the API could register a deployment whose pull step runs a shell on the worker: only /health is
    open."""
    import urllib.error

    assert _api(prefect_api, "/health", auth=None) is True
    for auth in (None, "dfd:wrong", "prefect-auth-test-secret"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _api(prefect_api, "/deployments/filter", {}, auth=auth)
        assert err.value.code == 401
    assert isinstance(_api(prefect_api, "/deployments/filter", {}), list)  # the right string opens it


@pytest.mark.slow
def test_dfd_deploy_schedules_weekly_and_a_worker_runs_the_pipeline(prefect_api: str, tiny_dataset: Path,
                                                                     tmp_path: Path) -> None:
    tz = "America/New_York"  # not UTC, and with DST: "7 days apart" must hold on the local clock
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(
        {"schedule": {"timezone": tz, "project_dir": str(PROJECT), "work_pool": "dfd-test-pool"}}))
    # Two members: the check is that a worker runs the pipeline end to end, which more members would only prolong.
    (tmp_path / "local.yaml").write_text(yaml.safe_dump({"data": {"root": str(tiny_dataset)},
                                                         "models": {"xception": None, "efficientnet": None,
                                                                    "sbi": None}}))
    env = _env(PREFECT_API_URL=prefect_api, PREFECT_API_AUTH_STRING=AUTH)  # the CLI and the worker send it
    out = subprocess.run([sys.executable, "-m", "dfd.cli", "--params", str(PROJECT / "params.yaml"), "--override",
                          str(tmp_path / "deploy.yaml"), "deploy"], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "deepfake-pipeline/weekly" in out.stdout

    weekly = _api(prefect_api, "/deployments/name/deepfake-pipeline/weekly")
    on_demand = _api(prefect_api, "/deployments/name/deepfake-pipeline/on-demand")
    assert weekly["work_pool_name"] == on_demand["work_pool_name"] == "dfd-test-pool"
    (sched,) = weekly["schedules"]
    assert (sched["schedule"]["cron"], sched["schedule"]["timezone"]) == ("0 3 * * 1", tz)
    assert on_demand["schedules"] == []
    assert weekly["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(PROJECT)

    # The server's scheduler fills in the next runs: Mondays 03:00 local, 7 local days apart.
    deadline, runs = time.time() + 60, []
    while len(runs) < 3 and time.time() < deadline:
        time.sleep(0.5)
        runs = _api(prefect_api, "/flow_runs/filter", {
            "deployments": {"id": {"any_": [weekly["id"]]}}, "sort": "EXPECTED_START_TIME_ASC",
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
    assert len(runs) >= 3
    local = [dt.datetime.fromisoformat(r["expected_start_time"]).astimezone(ZoneInfo(tz)) for r in runs]
    assert all((t.weekday(), t.hour, t.minute) == (0, 3, 0) for t in local)
    assert {(b.replace(tzinfo=None) - a.replace(tzinfo=None)) for a, b in itertools.pairwise(local)} == {
        dt.timedelta(days=7)}

    # One run through a real worker: the on-demand deployment on the tiny params and dataset.
    run = _api(prefect_api, f"/deployments/{on_demand['id']}/create_flow_run", {"parameters": {
        "path": str(PROJECT / "params.yaml"), "overrides": [str(TINY), str(tmp_path / "local.yaml")],
        "root": str(tmp_path)}})
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", "dfd-test-pool", "--type", "process"],
                              env=env | WORKER_ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, state = time.time() + 480, None
        while time.time() < deadline:
            state = _api(prefect_api, f"/flow_runs/{run['id']}")["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
    finally:
        _stop(worker)
        log.close()
    assert state and state["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    assert (tmp_path / "artifacts" / "ensemble" / "ensemble.json").is_file()
    assert (tmp_path / "artifacts" / "registry.json").is_file() and (tmp_path / "mlflow.db").is_file()
