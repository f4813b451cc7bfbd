"""A cancelled run is a cancelled run: `prefect flow-run cancel` during the faces stage, on a real server and worker.

The run must end Cancelled (not Crashed), keep what finished (ingest's manifest), and send no crash alert; with
`alerts.on_cancel: true` one `cancelled` notice goes out instead.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT, TINY
from tests.operations.test_deploy import (  # noqa: F401  (the module server)
    AUTH,
    PREFECT,
    WORKER_ENV,
    _api,
    _env,
    _stop,
    prefect_api,
)

pytestmark = pytest.mark.slow


def _wait_state(api: str, run_id: str, types: tuple[str, ...], timeout_s: float) -> dict:
    deadline, state = time.time() + timeout_s, {}
    while time.time() < deadline:
        state = _api(api, f"/flow_runs/{run_id}")["state"]
        if state["type"] in types:
            return state
        time.sleep(1)
    return state


def _running_task(api: str, run_id: str, name: str) -> bool:
    runs = _api(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}},
                                           "task_runs": {"state": {"type": {"any_": ["RUNNING"]}}}})
    return any(r["name"].startswith(name) for r in runs)


def _run_processes(session: int) -> list[str]:
    """Live processes of the worker's session (`start_new_session`) that belong to a flow run: the flow process,
    the faces stage's pool workers, training children. Re-parented orphans keep the session, so they count."""
    import os

    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.pid == session or os.getsid(proc.pid) != session or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(mark in cmd for mark in ("prefect.engine", "multiprocessing.spawn", "stage train")):
            found.append(f"{proc.pid}: {cmd[:300]}")
    return found


def test_a_cancel_during_faces_ends_cancelled_without_a_crash_alert(prefect_api: str, tiny_dataset: Path,  # noqa: F811
                                                                      tmp_path: Path, webhook) -> None:
    url, posts = webhook
    pool = "dfd-cancel-pool"
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump({"schedule": {"project_dir": str(PROJECT),
                                                                       "work_pool": pool}}))
    # dlib's CNN detector at 2x upsampling: a faces stage slow enough (tens of seconds) to be cancelled inside.
    (tmp_path / "local.yaml").write_text(yaml.safe_dump({
        "data": {"root": str(tiny_dataset)}, "faces": {"detector": "dlib_cnn", "upsample": 2, "workers": 2},
        "alerts": {"slack": {"enabled": True, "webhook_env": "DFD_TEST_WEBHOOK"}, "attempts": 1, "on_cancel": True,
                   "allow_insecure": True}}))  # the receiver is http:// on loopback
    env = _env(PREFECT_API_URL=prefect_api, PREFECT_API_AUTH_STRING=AUTH, DFD_TEST_WEBHOOK=url)
    out = subprocess.run([sys.executable, "-m", "dfd.cli", "--params", str(PROJECT / "params.yaml"), "--override",
                          str(tmp_path / "deploy.yaml"), "deploy"], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    on_demand = _api(prefect_api, "/deployments/name/deepfake-pipeline/on-demand")
    run = _api(prefect_api, f"/deployments/{on_demand['id']}/create_flow_run", {"parameters": {
        "path": str(PROJECT / "params.yaml"), "overrides": [str(TINY), str(tmp_path / "local.yaml")],
        "root": str(tmp_path)}})
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", pool, "--type", "process"],
                              env=env | WORKER_ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not _running_task(prefect_api, run["id"], "faces"):
            assert time.time() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
            assert _api(prefect_api, f"/flow_runs/{run['id']}")["state"]["type"] in ("SCHEDULED", "PENDING",
                                                                                       "RUNNING")
            time.sleep(0.5)
        time.sleep(2)
        cancel = subprocess.run([str(PREFECT), "flow-run", "cancel", run["id"]], env=env, capture_output=True,
                                text=True, timeout=60)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        state = _wait_state(prefect_api, run["id"], ("CANCELLED", "CRASHED", "FAILED", "COMPLETED"), 120)
        time.sleep(3)  # a late hook would post now
        # Before the worker is stopped (its stop would take them down too, hiding them): nothing the run started
        # still works, orphans included (they keep the worker's session when re-parented).
        deadline, left = time.time() + 60, _run_processes(worker.pid)
        while left and time.time() < deadline:
            time.sleep(0.5)
            left = _run_processes(worker.pid)
        assert not left, left
    finally:
        _stop(worker)
        log.close()
    worker_log = (tmp_path / "worker.log").read_text()
    assert state.get("type") == "CANCELLED", f"{state}\n{worker_log[-4000:]}"
    assert (tmp_path / "data" / "manifests" / "ingest_report.json").is_file()  # what finished is kept
    # The cancel landed inside faces: the stage wrote neither its index nor its report, and no training started.
    faces_dir = tmp_path / "data" / "faces"
    assert not (faces_dir / "index.parquet").exists() and not (faces_dir / "faces_report.json").exists()
    assert not (tmp_path / "artifacts" / "models").exists()
    # No crash alert for a deliberate cancel; the one `cancelled` notice alerts.on_cancel asks for.
    assert [p["text"].splitlines()[0] for p in posts] == [f"*[dfd] pipeline run {run['name']} cancelled*"], posts
    # The flow run is cancelled, not crashed (the faces task run itself is Crashed: Prefect's task engine reports a
    # SIGTERM inside a task that way, whatever its cause).
    assert f"Flow run '{run['name']}' - Crash detected" not in worker_log and "Flow run was cancelled" in worker_log


def test_no_cancel_notice_unless_asked() -> None:
    from types import SimpleNamespace

    from dfd.platform.config import AlertParams
    from flows.cancel import notify_cancelled

    run = SimpleNamespace(name="calm-otter", id="0")
    assert notify_cancelled(AlertParams(), run) == {}  # on_cancel off: nothing is sent, on any channel
    assert notify_cancelled(AlertParams(on_cancel=True), run) == {"email": "off", "slack": "off"}
