"""The temporary Prefect server a `dfd run` starts when no server is configured, started the way a CLI needs it.

Prefect's own ephemeral server inherits the terminal: its server-side log lines (a sqlite "database is locked" on a
heartbeat write when several runs share `~/.prefect/prefect.db`) land in the middle of `dfd run`'s output, with a
traceback, though the run itself is fine. And a SIGKILLed `dfd run` leaves it running. This one logs to a file, and
dies with its parent (parent-death signal) and with the run (process group).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from dfd.platform.errors import DfdError
from dfd.platform.procs import child_env, stop_group

STARTUP_S = 120.0
DRAIN_S = 15.0  # at most this long to hand the last logs and events to the temporary server before it stops
log = logging.getLogger(__name__)
# Runs Prefect's server app under uvicorn, after arming the parent-death signal (set up from the environment).
_LAUNCH = ("import runpy, sys; from dfd.platform.procs import arm_from_env; arm_from_env(); "
           "sys.argv = ['uvicorn', *sys.argv[1:]]; runpy.run_module('uvicorn', run_name='__main__')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _drain_to(url: str) -> None:
    """Send the logs and events Prefect still holds while the temporary server is up to receive them.

    Otherwise Prefect's background workers find the server gone at interpreter exit and retry for about a minute
    ("Error logging to API"): a failed `dfd run` printed its one-line error and then hung ~70 s.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=DRAIN_S)
        except Exception as exc:  # a flush that fails must not hide the run's own outcome
            log.warning("could not flush Prefect %s to %s: %s", worker.__name__, url, exc)


@contextlib.contextmanager
def prefect_api(log_path: Path) -> Iterator[str | None]:
    """Use the configured Prefect API, or start a private temporary server for the duration of the block.

    Args:
        log_path: Where the temporary server's output goes (it never reaches the terminal).

    Yields:
        The temporary server's API URL, or None when a server is configured (PREFECT_API_URL).
    """
    from prefect.server.api import server as prefect_server
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    cmd = [sys.executable, "-c", _LAUNCH, "--app-dir", str(Path(prefect_server.__file__).parents[3]), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        group = {"process_group": 0} if os.name == "posix" else {}
        proc = subprocess.Popen(cmd, env=child_env(env), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **group)
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DfdError(f"the temporary Prefect server did not start (see {log_path})",
                               "or start one with `prefect server start` and set PREFECT_API_URL")
            time.sleep(0.2)
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_to(url)
    finally:
        if os.name == "posix":
            stop_group(proc, 5.0)
        else:
            proc.terminate()
            proc.wait()
