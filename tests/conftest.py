"""Shared fixtures: tiny params, a tiny generated dataset, the real-data path, and one Prefect test server."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from dfd.data.demo_data import generate
from dfd.platform.config import load_params
from tests.helpers import PROJECT, SHARED_DATA, TINY

# Telemetry off for this process and every child it starts, before any test module imports a library that reads
# its setting once at import (none of the imports above does): the suite must never try the network.
# scripts/test.sh exports the same; tests/unit/test_offline.py checks each library took it.
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",  # DO_NOT_TRACK: MLflow and evidently
                 "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
os.environ.update(TELEMETRY_OFF)


@pytest.fixture(autouse=True)
def _mlflow_fluent_uris_reset() -> Iterator[None]:
    """A test that points MLflow's process-wide URIs somewhere must not redirect the next test's clients."""
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset at test size, generated once per session (read-only for tests: copy before changing)."""
    root = tmp_path_factory.mktemp("tiny") / "raw"
    p = load_params(PROJECT / "params.yaml", [TINY]).demo_data
    generate(root, seed=0, identities=p.identities, images_per_identity=p.images_per_identity, videos=p.videos,
             frames_per_video=p.frames_per_video, image_size=p.image_size)
    return root


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_dataset: Path) -> Path:
    """A fresh project folder holding a copy of the tiny dataset at `raw/`."""
    shutil.copytree(tiny_dataset, tmp_path / "raw")
    return tmp_path


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """A project folder after ingest, faces, four tiny trained members, ensemble and evaluate (once per session).

    Read-only for tests: copy it (`shutil.copytree`) before running a stage that writes into it.
    Params: `tests.helpers.tiny_params(root)`; layout: `Layout.from_params(params, root)`.
    """
    from dfd.platform.layout import Layout
    from tasks import ensemble, evaluate, faces, ingest, train
    from tests.helpers import tiny_params

    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(tiny_dataset, root / "raw")
    params = tiny_params(root)
    layout = Layout.from_params(params, root)
    ingest.run(params, layout)
    faces.run(params, layout)
    for m in params.models:
        train.run(params, layout, m, progress=False)
    ensemble.run(params, layout)
    evaluate.run(params, layout)
    return root


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline, with dfd's, Hugging Face's and torch hub's caches all empty temporary folders; returns dfd's.

    A test of what happens without weights must not depend on what this machine's caches happen to hold.
    """
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DFD_WEIGHTS_DIR", str(tmp_path / "dfd-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "dfd-weights"


@pytest.fixture(scope="session")
def ffpp_sample() -> Path:
    """The FaceForensics++ sample in ../shared/data, or a skip saying why."""
    path = SHARED_DATA / "ffpp_c23_sample"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (../shared/data is provided beside the repo in CI)")
    return path


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One real temporary Prefect server for the whole session (each costs seconds to start)."""
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    # Bind Prefect's console handler to pytest's session-wide stream now: set up first inside a test that uses
    # capfd/capsys, it would keep that test's stream and write to it closed in every later test.
    setup_logging(incremental=False)
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server on a free loopback port (moto's server mode; MinIO is not installable here).

    Yields its endpoint URL; fake credentials are set for the session so that boto3 never reaches AWS.
    """
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A webhook receiver on a free loopback port (http: alerts to it need `alerts.allow_insecure`).

    Yields its URL and the JSON bodies it got.
    """
    posts: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    http = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_port}/services/hook", posts
    http.shutdown()
    http.server_close()
