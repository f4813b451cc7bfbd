"""Reruns that cost what changed: the real flow, three times on one tiny project (real Prefect and MLflow)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfd.platform.config import load_params
from tests.helpers import PROJECT, TINY

pytestmark = pytest.mark.slow

# Two members: one whose params change, one that must stay untouched; more would only cost training time.
DROP = {"models": {"xception": None, "efficientnet": None, "sbi": None}}
MODELS = tuple(m for m in load_params(PROJECT / "params.yaml", [TINY]).models if m not in DROP["models"])


def _stamps(root: Path) -> dict[str, int]:
    """Modification times of every model's last.pt: a training child rewrites it each epoch."""
    return {m: (root / "artifacts" / "models" / m / "last.pt").stat().st_mtime_ns for m in MODELS}


def _children(root: Path, parent: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("deepfake-detection")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=100)
    return {r.data.tags["mlflow.runName"]: r for r in runs}


@pytest.fixture(scope="module")
def three_runs(prefect_server: None, tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> dict[str, Any]:
    """A full run, a run with nothing changed, and a run with one model's params changed."""
    import os

    from flows.pipeline import pipeline

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("rerun")
    shutil.copytree(tiny_dataset, root / "raw")
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    shutil.copy(TINY, root / "tiny.yaml")
    (root / "local.yaml").write_text(yaml.safe_dump({"data": {"root": "raw"}, **DROP}))
    (root / "lr.yaml").write_text(yaml.safe_dump({"models": {"mesonet": {"lr": 0.0005}}}))
    out: dict[str, Any] = {"root": root}
    try:
        for name, overrides in (("first", ["tiny.yaml", "local.yaml"]), ("second", ["tiny.yaml", "local.yaml"]),
                                ("third", ["tiny.yaml", "local.yaml", "lr.yaml"])):
            before = _stamps(root) if name != "first" else {}
            start = time.perf_counter()
            # The second run is the weekly deployment's: it judges the served traffic first (none was served).
            summary = pipeline(path="params.yaml", overrides=overrides, root=str(root), monitor=name == "second")
            out[name] = {"summary": summary, "seconds": time.perf_counter() - start, "before": before,
                         "after": _stamps(root), "children": _children(root, summary.run_id)}
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    print(f"\nrerun timings: first {out['first']['seconds']:.1f} s, nothing changed {out['second']['seconds']:.1f} s "
          f"({out['second']['seconds'] / out['first']['seconds']:.0%}), one model changed "
          f"{out['third']['seconds']:.1f} s")
    return out


def _up_to_date(run: dict[str, Any]) -> dict[str, bool]:
    return {name: r.data.tags.get("up_to_date") == "true" for name, r in run["children"].items()}


def test_nothing_changed_runs_nothing_and_registers_nothing(three_runs: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    first, second = three_runs["first"], three_runs["second"]
    assert not first["summary"].unchanged and first["summary"].version == "1"
    assert not any(_up_to_date(first).values())

    summary = second["summary"]
    assert summary.unchanged and summary.version == "1"
    assert summary.gate == first["summary"].gate and summary.metrics == first["summary"].metrics
    assert summary.monitor_status == "too_few_records" and not first["summary"].monitor_status
    assert second["children"]["monitor"].data.tags["model_version"] == "1"
    flags = {k: v for k, v in _up_to_date(second).items() if k != "monitor"}
    assert set(flags) == {"ingest", "faces", *(f"train@{m}" for m in MODELS), "ensemble", "evaluate", "register"}
    assert all(flags.values()), flags
    assert second["after"] == second["before"]  # no training child process touched a checkpoint

    uri = f"sqlite:///{three_runs['root'] / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    parent = client.get_run(summary.run_id)
    assert parent.data.tags["note"] == "nothing changed since version 1"
    versions_after_second = {"1"}  # the third run adds one; nothing else may have registered
    all_versions = {str(v.version) for v in client.search_model_versions("name='deepfake-ensemble'")}
    assert all_versions == versions_after_second | {three_runs["third"]["summary"].version}


def test_one_model_changed_reruns_that_model_and_what_follows(three_runs: dict[str, Any]) -> None:
    third = three_runs["third"]
    flags = _up_to_date(third)
    reran = {name for name, fresh in flags.items() if not fresh}
    assert reran == {"train@mesonet", "ensemble", "evaluate", "register"}
    assert third["after"]["mesonet"] != third["before"]["mesonet"]
    assert {m: third["after"][m] for m in MODELS[1:]} == {m: third["before"][m] for m in MODELS[1:]}
    assert not third["summary"].unchanged and third["summary"].version == "2"
    reason = third["children"]["train@mesonet"].data.tags["rerun_reason"]
    assert reason == "changed: params"
