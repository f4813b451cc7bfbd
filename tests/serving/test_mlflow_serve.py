"""`mlflow models serve` runs the registered pyfunc as it is (a real process on a free loopback port)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest


@pytest.mark.slow
def test_mlflow_models_serve(registered, loaded, media: dict[str, Path], tmp_path: Path) -> None:
    """Crops as `inputs`, and media files as a `dataframe_split` of paths and of base64 bytes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    # MLflow execs `uvicorn` by name: the venv's bin on PATH, as in an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.tracking_uri, "OMP_NUM_THREADS": "1",
           "DFD_PATH_ROOTS": str(media["face"].parent),
           "PATH": f"{Path(mlflow_bin).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", registered.uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "mlflow models serve did not start"
            time.sleep(1)
        crops = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
        resp = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": crops.tolist()}, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == pytest.approx(loaded.pyfunc.predict(crops).tolist(), abs=1e-5)
        expected = loaded.python_model.scorer.score_path(media["face"]).p_fake
        by_path = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=120, json={
            "dataframe_split": {"columns": ["path"], "data": [[str(media["face"])], [str(media["noface"])]]}})
        assert by_path.status_code == 200, by_path.text
        rows = by_path.json()["predictions"]
        assert rows[0]["p_fake"] == pytest.approx(expected, abs=1e-5) and rows[1]["reason"] == "no_face"
        encoded = base64.b64encode(media["face"].read_bytes()).decode()
        by_bytes = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=120, json={
            "dataframe_split": {"columns": ["content", "name"], "data": [[encoded, "face.png"]]}})
        assert by_bytes.status_code == 200, by_bytes.text
        assert by_bytes.json()["predictions"][0]["p_fake"] == pytest.approx(expected, abs=1e-5)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
