"""The served predictor reproduces the stage's calibrated scores; an unreadable crop is excluded, not scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dfd.evaluation.calibration import apply_post_calibration
from dfd.platform.layout import Layout
from dfd.serving.ensemble import EnsemblePredictor
from tasks import ensemble, evaluate, train
from tests.helpers import tiny_params

pytestmark = pytest.mark.slow


def _test_crops(layout: Layout, preds: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    index = pd.read_parquet(layout.faces_index)[["sample_id", "frame", "crop"]]
    test = preds[preds["split"] == "test"].merge(index, on=["sample_id", "frame"], how="left")
    crops = np.stack([cv2.cvtColor(cv2.imread(str(layout.faces_index.parent / c)), cv2.COLOR_BGR2RGB)
                      for c in test["crop"]])
    return test, crops


@pytest.mark.parametrize(("method", "calibration"), [("weighted_average", "platt"), ("stacking", "isotonic"),
                                                      ("confidence", "temperature")])
def test_served_predictor_reproduces_the_calibrated_stage_scores(trained_project: Path, tmp_path: Path, method: str,
                                                                 calibration: str) -> None:
    params = tiny_params(trained_project, ensemble={"method": method, "calibration": calibration})
    layout = Layout.from_params(params, trained_project)
    paths = {m: layout.model_dir(m) / "predictions.parquet" for m in params.models}
    res = ensemble.build_ensemble(params.ensemble, paths, tmp_path / "ens", faces_index=layout.faces_index)
    spec = json.loads(res.spec.read_text())
    assert spec["fusion"]["method"] == method and spec["post_calibration"]["method"] == calibration
    test, crops = _test_crops(layout, pd.read_parquet(res.predictions))
    predictor = EnsemblePredictor.from_spec(spec, {m: layout.model_dir(m) / "best.pt" for m in spec["members"]})
    served = predictor(crops)
    assert np.allclose(served, test["prob"].to_numpy(), atol=1e-4)
    # `prob` is the fused score after the recorded calibration (Platt after a Platt-scaled member may be the identity)
    assert np.allclose(test["prob"], apply_post_calibration(spec["post_calibration"], test["prob_fused"]))
    if calibration != "platt":
        assert not np.allclose(test["prob"], test["prob_fused"], atol=1e-3)


def test_an_unreadable_test_crop_is_excluded_and_reported(trained_project: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(trained_project, root)  # the trained project is shared by the session: break a copy
    params = tiny_params(root)
    layout = Layout.from_params(params, root)
    index = pd.read_parquet(layout.faces_index)
    victim = index[index["split"] == "test"].iloc[0]
    bad_path = layout.faces_index.parent / victim["crop"]
    bad_path.write_bytes(np.random.default_rng(0).bytes(2048))
    key = (victim["sample_id"], victim["frame"])

    res = train.run(params, layout, "mesonet", progress=False)  # resumes: only re-predicts val and test
    preds = pd.read_parquet(res.predictions)
    assert key not in set(zip(preds["sample_id"], preds["frame"], strict=True))
    assert len(preds) == len(index[index["split"].isin(["val", "test"])]) - 1
    assert [b["path"] for b in res.summary["bad_crops"]] == [str(bad_path)]

    ens = ensemble.run(params, layout)
    fused = pd.read_parquet(ens.predictions)
    assert key not in set(zip(fused["sample_id"], fused["frame"], strict=True))
    assert json.loads(ens.spec.read_text())["excluded_rows"] == 1
    out = evaluate.run(params, layout)
    assert out.metrics["bad_crops"] == [str(bad_path)]


def test_registered_pyfunc_reproduces_the_evaluated_scores(trained_project: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """What `dfd predict`/`dfd serve` load from the registry returns the calibrated P(fake) evaluation measured."""
    import mlflow.pyfunc  # binds `mlflow` too

    from dfd.platform.tracking import Tracker
    from tasks import register

    root = tmp_path / "project"
    shutil.copytree(trained_project, root)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(root)
    layout = Layout.from_params(params, root)
    tracker = Tracker.from_params(params, root)
    res = register.run(params, layout, tracker)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)
    mlflow.set_tracking_uri(tracker.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{res.model_name}/{res.version}")
    finally:
        mlflow.set_tracking_uri(None)
    test, crops = _test_crops(layout, pd.read_parquet(layout.ensemble_dir / "predictions.parquet"))
    assert np.allclose(model.predict(crops), test["prob"].to_numpy(), atol=1e-4)
