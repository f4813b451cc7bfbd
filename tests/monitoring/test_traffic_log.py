"""Traffic records (queue, writer thread, day parts, retention) and the drift checks, on tiny synthetic inputs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfd.monitoring.checks import judge, psi, weekly_series
from dfd.monitoring.store import LocalStore, S3Store
from dfd.monitoring.traffic import TrafficLog, encode, make_record, parse_window, prune, read_records
from dfd.platform.config import MonitorParams, StorageParams
from dfd.platform.errors import ConfigError
from dfd.serving.media_scoring import MediaResult
from tests.helpers import wait_for

CFG = MonitorParams(flush_interval_s=0.2, flush_records=1000, min_records=20)


def _result(rng: np.random.Generator, brightness: float = 128.0, name: str = "/secret/alice.png") -> MediaResult:
    crop = np.clip(rng.normal(brightness, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
    res = MediaResult(name, p_fake=float(rng.uniform()), label="real", frames=1, faces=1)
    res.crops = [{"frame": 0, "crop": crop, "p_fake": res.p_fake}]
    return res


def test_records_are_written_by_day_without_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with TrafficLog(LocalStore(tmp_path / "log"), CFG, "serve") as traffic:
        for _ in range(5):
            traffic.record(_result(rng), "3")
        traffic.record(MediaResult("/secret/bob.mp4", frames=4, reason="no_face"), "3")
        # The writer flushes on its interval (0.2 s), off the caller's thread: before close() asks it to.
        wait_for(lambda: traffic.written == 6, 30, "the writer's interval flush")
    parts = sorted((tmp_path / "log").rglob("*.parquet"))
    assert parts and all(p.parent.name == f"day={datetime.now(UTC).date()}" for p in parts)
    df = read_records(LocalStore(tmp_path / "log"), datetime.now(UTC) - timedelta(hours=1))
    assert len(df) == 6 and set(df["model_version"]) == {"3"} and df["name"].isna().all()
    assert df["reason"].tolist().count("no_face") == 1
    scored = df[df["reason"].isna()]
    assert scored["brightness"].between(100, 160).all() and scored["sharpness"].gt(0).all()
    assert not any("secret" in str(v) for v in df.astype(str).to_numpy().ravel())  # no path, anywhere
    assert read_records(LocalStore(tmp_path / "log"), datetime.now(UTC) + timedelta(hours=1),
                        datetime.now(UTC) + timedelta(hours=2)).empty


def test_names_only_when_asked_and_a_full_queue_drops(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    assert make_record(_result(rng), "1", "serve", log_names=True)["name"] == "alice.png"
    traffic = TrafficLog(LocalStore(tmp_path), MonitorParams(queue_size=2), "serve")  # writer not started
    for _ in range(5):
        traffic.record(_result(rng), "1")
    assert traffic.dropped == 3 and traffic.queue.qsize() == 2


def test_a_sigterm_during_the_last_flush_waits_for_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`dfd serve` stopped twice (docker stop, then a script's cleanup): the records waiting are written first."""
    import os
    import signal

    from dfd.platform.interrupts import Interrupted

    class SignalledStore(LocalStore):  # a real folder; the second SIGTERM comes while the last part is being written
        def put(self, name: str, data: bytes) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)  # long enough for the handler to run in the main thread, were it not held
            super().put(name, data)

    def on_sigterm(signum: int, frame: object) -> None:  # what the CLI installs (dfd.commands.interrupts)
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # Flushes only on close: the one put, and so the signal, comes while close() waits for the writer.
        traffic = TrafficLog(SignalledStore(tmp_path / "log"), MonitorParams(flush_interval_s=600), "serve").start()
        traffic.record(_result(np.random.default_rng(6)), "3")
        with caplog.at_level("INFO", logger="dfd.monitoring.traffic"), pytest.raises(Interrupted):
            traffic.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert traffic.written == 1 and len(LocalStore(tmp_path / "log").names()) == 1  # written, then interrupted
    assert "traffic log: stopped; 1 record(s) written to" in caplog.text


def test_retention_deletes_only_old_parts_it_wrote(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    rec = make_record(_result(np.random.default_rng(2)), "1", "serve")
    for day in ("2026-01-01", "2026-02-27", "2026-03-01"):
        store.put(f"day={day}/part-x.parquet", encode([rec]))
    (tmp_path / "day=2026-01-01" / "notes.txt").write_text("the team's, not ours")
    (tmp_path / "keep.parquet").write_bytes(b"not ours either")
    assert prune(store, 30, datetime(2026, 3, 31).date()) == 2
    assert store.names() == ["day=2026-03-01/part-x.parquet"]  # 30 days back is kept
    assert (tmp_path / "day=2026-01-01" / "notes.txt").is_file() and (tmp_path / "keep.parquet").is_file()
    assert not (tmp_path / "day=2026-02-27").exists()  # emptied day folder removed
    with pytest.raises(ValueError):
        store.delete("keep.parquet")


def test_a_damaged_part_is_skipped_and_a_dead_s3_is_one_line(tmp_path: Path) -> None:
    import socket

    from dfd.platform.errors import StorageError

    store = LocalStore(tmp_path)
    day = datetime.now(UTC).date().isoformat()
    store.put(f"day={day}/part-good.parquet", encode([make_record(_result(np.random.default_rng(5)), "2", "serve")]))
    store.put(f"day={day}/part-bad.parquet", b"not parquet")
    assert len(read_records(store, datetime.now(UTC) - timedelta(hours=1))) == 1
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = StorageParams(endpoint_url=dead, max_attempts=1, connect_timeout_s=1, read_timeout_s=1)
    with pytest.raises(StorageError, match="cannot read traffic records at s3://b/p"):
        S3Store("s3://b/p", cfg).names()


def test_s3_store_round_trip(s3_server: str) -> None:
    from dfd.platform.storage import s3_client

    cfg = StorageParams(endpoint_url=s3_server)
    s3_client(cfg).create_bucket(Bucket="traffic")
    store = S3Store("s3://traffic/prod/log", cfg)
    with TrafficLog(store, CFG, "serve") as traffic:
        traffic.record(_result(np.random.default_rng(3)), "7")
    s3_client(cfg).put_object(Bucket="traffic", Key="prod/log/other.txt", Body=b"x")
    assert len(store.names()) == 1  # only its own parts
    assert read_records(store, datetime.now(UTC) - timedelta(hours=1))["model_version"].tolist() == ["7"]
    assert prune(store, 1, datetime.now(UTC).date() + timedelta(days=5)) == 1 and store.names() == []


def test_windows() -> None:
    assert parse_window("7d") == timedelta(days=7) and parse_window("36h") == timedelta(hours=36)
    for bad in ("7", "d", "0d", "-1d", "7y", "seven days"):
        with pytest.raises(ConfigError):
            parse_window(bad)


def _records(rng: np.random.Generator, n: int, shift: float = 0.0, no_face: int = 0) -> pd.DataFrame:
    rows = [{"time": datetime.now(UTC), "model_version": "1", "reason": None,
             "p_fake": float(np.clip(rng.beta(2, 5) + shift, 0, 1)), "brightness": rng.normal(120 - 200 * shift, 10),
             "contrast": rng.normal(40, 5), "sharpness": rng.normal(300 - 900 * shift, 30),
             "saturation": rng.normal(80, 8)} for _ in range(n)]
    rows += [{"time": datetime.now(UTC), "model_version": "1", "reason": "no_face", "p_fake": None}] * no_face
    return pd.DataFrame(rows)


def test_judge_finds_the_shift_and_names_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ref = _records(rng, 300)
    ref_images, ref_scores = ref[["brightness", "contrast", "sharpness", "saturation"]], ref[["p_fake"]]
    meta = {"no_face_rate": 0.05}
    # (No drift on unshifted traffic: the loopback test, tests/serving/test_monitoring_loop.py.)
    strict = CFG.model_copy(update={"max_drift_share": 0.25})  # 2 of 4 columns drift below: over 0.25, not over 0.5
    shifted = judge(_records(rng, 80, shift=0.3, no_face=40), ref_images, ref_scores, meta, strict, tmp_path / "b")
    assert shifted["status"] == "drift" and shifted["psi"] > CFG.max_psi and (tmp_path / "b" / "drift.html").is_file()
    assert {"brightness", "sharpness"} <= set(shifted["drift"]["drifted"]) and "contrast" not in shifted["drift"][
        "drifted"]
    assert any("no-face rate" in a for a in shifted["alerts"]) and len(shifted["alerts"]) == 3
    few = judge(_records(rng, 5), ref_images, ref_scores, meta, CFG, tmp_path / "c")
    assert few["status"] == "too_few_records" and "too few records" in few["message"] and "psi" not in few
    assert psi(ref_scores["p_fake"], ref_scores["p_fake"]) == pytest.approx(0.0, abs=1e-9)
    weeks = weekly_series(_records(rng, 30), ref_scores, CFG)
    assert len(weeks) == 1 and weeks["records"].iloc[0] == 30


def test_force_retrain_forgets_training_records_and_resume_points(tmp_path: Path) -> None:
    from dfd.platform.layout import Layout
    from dfd.platform.stage_cache import StageCache
    from flows import stage_inputs
    from flows.stages import force_retrain
    from tests.helpers import tiny_params

    params = tiny_params(tmp_path)
    layout = Layout.from_params(params, tmp_path)
    cache = StageCache(layout.artifacts, layout.root)
    for m in params.models:
        cache.record_path(stage_inputs.train(params, layout, m).name).parent.mkdir(parents=True, exist_ok=True)
        cache.record_path(stage_inputs.train(params, layout, m).name).write_text("{}")
        layout.model_dir(m).mkdir(parents=True)
        for f in ("last.pt", "best.pt"):
            (layout.model_dir(m) / f).write_bytes(b"x")
    cache.record_path("ensemble").write_text("{}")
    force_retrain(params, layout)
    for m in params.models:
        assert not cache.record_path(stage_inputs.train(params, layout, m).name).exists()
        assert not (layout.model_dir(m) / "last.pt").exists() and (layout.model_dir(m) / "best.pt").is_file()
    assert cache.record_path("ensemble").is_file()  # downstream stages rerun because their inputs change
