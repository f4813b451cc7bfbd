"""The loop closed on loopback: a real `dfd serve` records what it scores, `dfd monitor` judges it and alerts.

One batch of demo images, then the same images shifted (darker, blurred, recompressed): the first window shows no
drift, the second does; the alert reaches a local HTTP webhook receiver and the report names the shifted columns.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import cv2
import httpx
import pytest
import yaml

from dfd.cli import main
from tests.helpers import PROJECT, TINY, wait_until_up


def _shifted(png: bytes) -> bytes:
    """Darker, blurred and recompressed: what a new camera or a new platform's transcoder does to the traffic."""
    img = cv2.imdecode(__import__("numpy").frombuffer(png, "uint8"), cv2.IMREAD_COLOR)
    img = cv2.GaussianBlur(cv2.convertScaleAbs(img, alpha=0.45), (0, 0), 2.0)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 25])[1].tobytes()


@pytest.mark.slow
def test_served_traffic_drift_is_found_and_alerted(registered, tiny_dataset: Path, tmp_path: Path, webhook,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    url, posts = webhook
    images = sorted(tiny_dataset.rglob("*.png"))
    extra = tmp_path / "monitor.yaml"
    extra.write_text(yaml.safe_dump({
        "data": {"root": str(registered.root / "raw")}, "mlflow": {"tracking_uri": registered.tracking_uri},
        "serve": {"poll_interval_s": 0},
        "monitor": {"log_dir": str(tmp_path / "traffic"), "flush_interval_s": 0.5, "min_records": 10,
                    "psi_bins": 4},
        "alerts": {"slack": {"enabled": True, "webhook_env": "DFD_TEST_WEBHOOK"}, "attempts": 1,
                   "allow_insecure": True}}))  # the receiver is http:// on loopback
    args = ["--params", str(PROJECT / "params.yaml"), "--override", str(TINY), "--override", str(extra)]
    monkeypatch.setenv("DFD_TEST_WEBHOOK", url)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dfd.cli", *args, "serve", "--port", str(port)], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/health", proc, 180, "dfd serve")
        t0 = datetime.now(UTC).isoformat()
        for p in images:
            assert httpx.post(f"{base}/predict", files={"file": ("x.png", p.read_bytes())}, timeout=60).is_success
        t1 = datetime.now(UTC).isoformat()
        for p in images:
            httpx.post(f"{base}/predict", files={"file": ("x.jpg", _shifted(p.read_bytes()))}, timeout=60)
    finally:
        proc.terminate()  # SIGTERM: the writer flushes what waits before the process ends, and says so
        proc.wait(30)
        log.close()
    served = (tmp_path / "serve.log").read_text()
    assert proc.returncode == 0, served[-2000:]
    assert f"traffic log: stopped; {2 * len(images)} record(s) written to {tmp_path / 'traffic'}" in served
    monkeypatch.chdir(tmp_path)

    assert main([*args, "monitor", "--since", t0, "--until", t1]) == 0  # the unshifted batch
    first = json.loads(sorted((tmp_path / "artifacts" / "monitoring").glob("*/monitor.json"))[-1].read_text())
    assert first["records"] == len(images) and first["status"] == "ok", first["message"]
    assert first["drift"]["drifted"] == [] and not posts
    assert main([*args, "monitor", "--since", t1]) == 0  # the shifted batch
    out = capsys.readouterr().out
    reports = sorted((tmp_path / "artifacts" / "monitoring").glob("*/monitor.json"))
    second = json.loads(reports[-1].read_text())
    assert len(reports) == 2 and second["status"] == "drift" and second["records"] == len(images), out
    assert {"brightness", "sharpness"} <= set(second["drift"]["drifted"]), second
    assert (reports[-1].parent / "drift.html").is_file() and (reports[-1].parent / "weekly.png").is_file()
    assert len(posts) == 1 and "drift in served traffic" in posts[0]["text"] and "brightness" in posts[0]["text"]


def test_predict_log_records_each_file_without_its_name(registered, media: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dfd.monitoring.store import LocalStore
    from dfd.monitoring.traffic import read_records

    extra = tmp_path / "log.yaml"
    extra.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": registered.tracking_uri},
                                     "monitor": {"log_dir": str(tmp_path / "traffic")}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files = [media["face"], media["noface"]]
    assert main(["--params", str(PROJECT / "params.yaml"), "--override", str(extra), "predict",
                 *map(str, files), "--log", "--no-progress"]) == 1  # the no-face file has no score
    df = read_records(LocalStore(tmp_path / "traffic"), datetime(2000, 1, 1, tzinfo=UTC))
    assert len(df) == 2 and set(df["source"]) == {"predict"} and set(df["model_version"]) == {registered.version}
    assert sorted(df["reason"].fillna("scored")) == ["no_face", "scored"] and df["name"].isna().all()
