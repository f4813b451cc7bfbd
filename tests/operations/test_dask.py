"""The Dask task runner: a local cluster of two worker processes trains two tiny models in parallel."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_params

MODELS = ("mesonet", "xception")


def test_a_runner_whose_extra_is_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect_dask  # noqa: F401  (a dev dependency: a broken install must fail here, not skip)

    from dfd.platform.config import RunnerParams
    from dfd.platform.errors import ConfigError
    from flows.runners import task_runner

    # A None entry in sys.modules makes `import prefect_ray` raise ImportError, installed or not: the missing-extra
    # path is checked on every machine instead of being skipped where prefect-ray happens to be installed.
    monkeypatch.setitem(sys.modules, "prefect_ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'dfd\[ray\]'"):
        task_runner(RunnerParams(kind="ray"))
    assert type(task_runner(RunnerParams(kind="dask", address="tcp://127.0.0.1:8786"))).__name__ == "DaskTaskRunner"


@pytest.mark.slow
def test_dask_local_cluster_trains_two_models_in_parallel(prefect_server: None, trained_project: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow

    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from flows.runners import task_runner, train_all

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "project"
    shutil.copytree(trained_project, root)
    for m in MODELS:  # train anew, not resume the session's finished checkpoints
        shutil.rmtree(root / "artifacts" / "models" / m)
    params = tiny_params(root, runner={"kind": "dask", "dask_workers": 2})
    params = params.model_copy(update={"models": {m: params.models[m] for m in MODELS}})
    assert type(task_runner(params.runner)).__name__ == "DaskTaskRunner"
    layout, tracker = Layout.from_params(params, root), Tracker.from_params(params, root)

    @flow(name="dask-two-models")
    def two_models() -> tuple[str, list]:
        with tracker.run("pipeline") as parent:
            return parent, train_all(params, layout, tracker, parent)

    parent, results = two_models()
    assert [r.best for r in results] == [layout.artifacts / "models" / m / "best.pt" for m in MODELS]
    assert all(r.best.is_file() for r in results)
    runs = {r.data.tags["mlflow.runName"]: r.info for r in tracker.client.search_runs(
        [tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")}
    assert set(runs) == {f"train@{m}" for m in MODELS} and all(i.status == "FINISHED" for i in runs.values())
    # In parallel: each model's run started before the other one ended (two worker processes, one task each).
    a, b = runs.values()
    assert max(a.start_time, b.start_time) < min(a.end_time, b.end_time)
