"""The audit trail: alias moves (through the real MLflow service object on a sqlite store) and appends from several
processes at once, each one whole JSON line; what a record says of a URI never carries its key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfd.platform.audit import AuditLog, audit_log
from dfd.platform.config import Params
from dfd.platform.tracking import Tracker
from tests.helpers import PROJECT


def test_records_are_whole_lines_even_from_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = ("import sys; from pathlib import Path; from dfd.platform.audit import AuditLog\n"
              "log = AuditLog(Path(sys.argv[1]))\n"
              "for i in range(300): log.append('deploy', target='s3://k:hunter2@minio/b', i=i, w=sys.argv[2],"
              " pad='x' * 500)\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path), str(w)], cwd=PROJECT,
                              env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"}) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    records = AuditLog(path).read()  # json.loads of every line: a torn or interleaved line fails here
    assert len(records) == 1200
    assert {(r["w"], r["i"]) for r in records} == {(str(w), i) for w in range(4) for i in range(300)}
    assert all(r["target"] == "s3://minio/b" and r["action"] == "deploy" and "@" in r["by"] for r in records)
    assert "hunter2" not in path.read_text()


def test_audit_log_follows_params(tmp_path: Path) -> None:
    assert audit_log(None, tmp_path) is None
    assert audit_log("artifacts/audit.jsonl", tmp_path).path == tmp_path / "artifacts" / "audit.jsonl"
    assert Params().registry.audit_log == "artifacts/audit.jsonl"


def test_every_alias_move_is_recorded_with_who_when_and_from_what(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.register import rollback

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "release-bot")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = Params.model_validate({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    tracker = Tracker.from_params(params, tmp_path)
    name = params.registry.model_name
    tracker.client.create_registered_model(name)
    for _ in range(2):
        tracker.client.create_model_version(name, (tmp_path / "model").as_uri())
    tracker.promote(name, "1", "production", "previous", {})
    tracker.promote(name, "2", "production", "previous", {"archived_reason": "replaced"})
    rollback(params.registry, tracker, reason="bad scores on Monday's traffic")
    records = tracker.audit.read()
    moves = [(r["alias"], r["previous"], r["version"]) for r in records]
    assert moves == [("production", None, "1"), ("production", "1", "2"), ("previous", None, "1"),
                     ("production", "2", "1")]
    assert {r["action"] for r in records} == {"alias"} and all(r["by"].startswith("release-bot@") for r in records)
    tag = tracker.client.get_registered_model(name).tags["production_moved"]
    assert tag.startswith("v2 -> v1 by release-bot@")
    assert (tmp_path / "artifacts" / "audit.jsonl").read_text().count("\n") == 4
    assert json.loads((tmp_path / "artifacts" / "audit.jsonl").read_text().splitlines()[0])["model"] == name
