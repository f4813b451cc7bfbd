"""The Prefect flow end to end on a real temporary Prefect server and a real sqlite MLflow store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from dfd.platform.config import load_params
from tests.helpers import PROJECT, TINY

pytestmark = pytest.mark.slow

# One training child per member of the tiny params (no hand-written list: `models:` decides).
STAGES = {"ingest", "faces", *(f"train@{m}" for m in load_params(PROJECT / "params.yaml", [TINY]).models), "ensemble",
          "evaluate", "register"}


def _git_init(root: Path) -> str:
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def _drifted_week(root: Path, version: str, n: int) -> None:
    """`n` served-traffic records of `version` from today, as `dfd serve` writes them, of shifted crops: the
    project's own face crops darkened and blurred (a new camera), every one scored fake."""
    from datetime import UTC, datetime

    from dfd.monitoring.store import LocalStore
    from dfd.monitoring.traffic import encode, make_record
    from dfd.serving.media_scoring import MediaResult

    records = []
    for crop in pd.read_parquet(root / "data" / "faces" / "index.parquet")["crop"].head(n):
        rgb = cv2.cvtColor(cv2.imread(str(root / "data" / "faces" / crop)), cv2.COLOR_BGR2RGB)
        shifted = cv2.GaussianBlur(cv2.convertScaleAbs(rgb, alpha=0.35), (0, 0), 2.0)
        res = MediaResult("x.png", p_fake=0.97, label="fake", frames=1, faces=1)
        res.crops = [{"frame": 0, "crop": shifted, "p_fake": 0.97}]
        records.append(make_record(res, version, "serve"))
    LocalStore(root / "monitoring" / "traffic").put(f"day={datetime.now(UTC).date()}/part-drifted-1.parquet",
                                                   encode(records))


def test_pipeline_runs_logs_registers_and_gates(prefect_server: None, tiny_project: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import pipeline
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tiny_project
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    shutil.copy(TINY, root / "tiny.yaml")
    (root / "local.yaml").write_text(yaml.safe_dump({"data": {"root": "raw"}}))
    (root / "strict.yaml").write_text(yaml.safe_dump({"evaluate": {"gate": {"min_auc": 1.01}}}))
    commit = _git_init(root)

    summary = pipeline(path="params.yaml", overrides=["tiny.yaml", "local.yaml"], root=str(root))
    assert summary.promoted and summary.version == "1"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert summary.tracking_uri == uri

    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("deepfake-detection")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parent = next(r for r in runs if r.info.run_id == summary.run_id)
    assert parent.data.tags["git_commit"] == commit and parent.data.tags["dvc_data_hash"].endswith(".dir")
    assert "train.epochs" in parent.data.params and "test.auc" in parent.data.metrics
    children = {r.data.tags["mlflow.runName"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == summary.run_id}
    assert set(children) == STAGES
    assert all(r.info.status == "FINISHED" for r in children.values())
    history = client.get_metric_history(children["train@mesonet"].info.run_id, "val_auc")
    assert len(history) == 1  # one point per epoch (tiny params train one epoch)
    artifacts = {a.path for a in client.list_artifacts(children["train@f3net"].info.run_id)}
    assert {"best.pt", "metrics.json", "predictions.parquet"} <= artifacts
    ingest_run = client.get_run(children["ingest"].info.run_id)
    assert ingest_run.inputs.dataset_inputs[0].dataset.digest == parent.data.tags["dvc_data_hash"][:36]

    version = client.get_model_version("deepfake-ensemble", "1")
    for tag in ("git_commit", "dvc_data_hash", "params_hash"):
        assert version.tags[tag] == parent.data.tags[tag]
    # The same lineage keys as `dvc repro` puts on a version (test_dvc_repro checks that side).
    from dfd.data.provenance import run_lineage
    from dfd.platform.config import load_params

    params = load_params(root / "params.yaml", [root / "tiny.yaml", root / "local.yaml"])
    lineage = run_lineage(params, root / "data" / "manifests" / "ingest_report.json", root)
    assert {k: version.tags.get(k) for k in lineage} == lineage
    assert str(client.get_model_version_by_alias("deepfake-ensemble", "production").version) == "1"

    # The registered model serves: crops in, P(fake) out.
    import mlflow.pyfunc

    mlflow.set_tracking_uri(uri)  # the flow leaves MLflow's process-wide URIs as it found them
    model = mlflow.pyfunc.load_model("models:/deepfake-ensemble@production")
    index = pd.read_parquet(root / "data" / "faces" / "index.parquet")
    index = index[index["split"] == "test"].head(3)
    crops = np.stack([cv2.cvtColor(cv2.imread(str(root / "data" / "faces" / c)), cv2.COLOR_BGR2RGB)
                      for c in index["crop"]])
    scores = model.predict(crops)
    # The scores the ensemble stage recorded for these test crops: served and evaluated are one model.
    recorded = pd.read_parquet(root / "artifacts" / "ensemble" / "predictions.parquet")
    fused = index[["sample_id", "frame"]].merge(recorded, on=["sample_id", "frame"], how="left")
    assert scores.shape == (3,) and scores == pytest.approx(fused["prob"].to_numpy(), abs=1e-5)

    # A failing gate registers a version but leaves the alias where it was. The same run removes a member by
    # override (`models: {sbi: null}`): the flow trains, fuses and registers the rest.
    (root / "drop.yaml").write_text(yaml.safe_dump({"models": {"sbi": None}}))
    failed = pipeline(path="params.yaml", overrides=["tiny.yaml", "local.yaml", "strict.yaml", "drop.yaml"],
                      root=str(root))
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{failed.run_id}'", max_results=100)
    assert {r.data.tags["mlflow.runName"] for r in runs} == STAGES - {"train@sbi"}
    members = yaml.safe_load((root / "artifacts" / "ensemble" / "ensemble.json").read_text())["members"]
    assert set(members) == {s.removeprefix("train@") for s in STAGES if s.startswith("train@")} - {"sbi"}
    assert failed.version == "2" and not failed.promoted and failed.gate["failed"] == ["min_auc"]
    assert str(client.get_model_version_by_alias("deepfake-ensemble", "production").version) == "1"
    v2 = client.get_model_version("deepfake-ensemble", "2").tags
    assert v2["gate_passed"] == "false" and v2["rejected"] == "true"
    assert v2["prefect_flow_run_id"] and v2["prefect_flow_run_id"] != version.tags["prefect_flow_run_id"]
    assert failed.gate["champion"]["version"] == "1"  # champion/challenger ran against v1 on the same crops

    # monitor.retrain_on_drift, end to end: the weekly run (monitor=True) finds this week's served traffic of the
    # production version (v1) drifted (darker, blurred crops, all scored fake), so the members train anew and a new
    # version is registered and gated, although the dataset did not change.
    _drifted_week(root, "1", 30)
    (root / "drift.yaml").write_text(yaml.safe_dump({"monitor": {"retrain_on_drift": True, "min_records": 20}}))
    drifted = pipeline(path="params.yaml", overrides=["tiny.yaml", "local.yaml", "drift.yaml"], root=str(root),
                       monitor=True)
    assert drifted.monitor_status == "drift" and drifted.version == "3" and drifted.registered
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{drifted.run_id}'", max_results=100)
    up_to_date = {r.data.tags["mlflow.runName"]: r.data.tags.get("up_to_date") for r in runs}
    assert up_to_date["ingest"] == up_to_date["faces"] == "true"  # the data did not change...
    assert all(up_to_date[s] == "false" for s in STAGES if s.startswith("train@"))  # ...and every member retrained
    v3 = client.get_model_version("deepfake-ensemble", "3").tags
    assert v3["retrain_trigger"].startswith("drift in served traffic (monitor run ")
    assert v3["dvc_data_hash"] == version.tags["dvc_data_hash"]
