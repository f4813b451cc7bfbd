"""The stage functions chained by hand on tiny data: outputs match the stage contracts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dfd.evaluation.calibration import calibrate
from dfd.evaluation.significance import identity_clusters, persons_of
from dfd.platform.config import load_params
from dfd.platform.errors import StageError
from dfd.platform.layout import Layout
from models.checkpoint import load_checkpoint
from tasks import ensemble, evaluate, train
from tests.helpers import PROJECT, TINY, tiny_params

MODELS = list(load_params(PROJECT / "params.yaml", [TINY]).models)  # follows `models:`, never a hand-written list


@pytest.fixture(scope="module")
def chained(trained_project: Path) -> tuple[Path, Layout]:
    return trained_project, Layout.from_params(tiny_params(trained_project), trained_project)


def test_training_outputs_follow_the_contract(chained: tuple[Path, Layout]) -> None:
    _, layout = chained
    for m in MODELS:
        d = layout.model_dir(m)
        assert {"best.pt", "last.pt", "metrics.json", "predictions.parquet"} <= {p.name for p in d.iterdir()}
        ckpt = load_checkpoint(d / "best.pt")
        spec = load_params(PROJECT / "params.yaml", [TINY]).models[m]
        assert ckpt["arch"] == (spec.arch or m) and "input_size" in ckpt["model_kwargs"]
        preds = pd.read_parquet(d / "predictions.parquet")
        summary = json.loads((d / "metrics.json").read_text())
        assert set(preds["split"]) == {"val", "test"} and preds["prob"].notna().all() and summary["history"]
        val = preds[preds["split"] == "val"]  # the summary's numbers are those of the predictions written
        assert summary["val"]["auc"] == pytest.approx(roc_auc_score(val["label"], val["prob"]), abs=1e-9)


def test_ensemble_weights_and_predictions(chained: tuple[Path, Layout]) -> None:
    _, layout = chained
    spec = json.loads((layout.ensemble_dir / "ensemble.json").read_text())
    assert sorted(spec["members"]) == sorted(MODELS)
    assert abs(sum(spec["weights"].values()) - 1) < 1e-9 and min(spec["weights"].values()) >= 0
    preds = pd.read_parquet(layout.ensemble_dir / "predictions.parquet")
    assert spec["fusion"]["method"] == "weighted_average" and spec["fusion"]["weights"] == spec["weights"]
    fused = sum(calibrate(preds[m], spec["calibration"][m]) * w for m, w in spec["weights"].items())
    assert np.allclose(preds["prob_fused"], fused)
    # `prob` is the fused score after the calibration fitted on validation (ensemble.calibration, default platt)
    post = spec["post_calibration"]
    assert post["method"] == "platt"
    assert np.allclose(preds["prob"], 1 / (1 + np.exp(-(post["a"] * np.log(fused / (1 - fused)) + post["b"]))))
    assert spec["threshold"] == spec["val_eer_threshold"] and spec["aggregation"]["method"] == "mean"
    index = pd.read_parquet(layout.faces_index)
    val = index[index["split"] == "val"].drop_duplicates("sample_id")
    val_ids = len(set(identity_clusters(persons_of(val), val["sample_id"].tolist())))
    cv = spec["cv"]  # identity-cluster-grouped folds on validation; the tiny data may hold a single cluster there
    assert cv["folds"] == min(val_ids, 5) if val_ids > 1 else "1 identity" in cv["skipped"]


def test_ensemble_search_prefers_the_informative_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 2, n)
    base = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "frame": 0, "label": labels,
                         "split": np.where(np.arange(n) < 100, "val", "test")})
    good, noise = tmp_path / "good.parquet", tmp_path / "noise.parquet"
    base.assign(prob=np.clip(labels * 0.6 + rng.normal(0.2, 0.1, n), 0, 1)).to_parquet(good)
    base.assign(prob=rng.uniform(0, 1, n)).to_parquet(noise)
    params = tiny_params(tmp_path, ensemble={"trials": 40})
    res = ensemble.build_ensemble(params.ensemble, {"good": good, "noise": noise}, tmp_path / "ens")
    assert res.weights["good"] > 0.7


def test_reports(chained: tuple[Path, Layout]) -> None:
    _, layout = chained
    reports = layout.reports_dir
    for name in ("metrics.json", "robustness.json", "evidently/drift_demo.html", "evidently/quality_demo.html",
                 "cross_dataset.json", "plots/roc_test.png", "plots/scores_test.png", "plots/pr_test.png",
                 "plots/confusion_test.png", "plots/reliability_test.png", "plots/scores_fused_test.png",
                 "plots/robustness.png", "plots/cross_dataset.png"):
        assert (reports / name).is_file(), name
    assert not (reports / "gate.json").exists()  # the register stage decides the gate (tests/flows/test_register_gate)
    metrics = json.loads((reports / "metrics.json").read_text())
    for key in ("auc", "ap", "eer", "accuracy", "log_loss", "brier", "ece", "video_auc", "video_eer", "video_ece"):
        assert key in metrics["ensemble"] and key in metrics["members"]["mesonet"]
    assert set(metrics["by_dataset"]) == {"demo"} and "ensemble" in metrics["by_dataset"]["demo"]
    assert metrics["by_method"] and metrics["bad_crops"] == []
    robust = json.loads((reports / "robustness.json").read_text())
    assert set(robust["perturbed"]) == {"jpeg", "gauss_blur"} and set(robust["perturbed"]["jpeg"]) == {"70", "30"}
    assert set(robust["adversarial"]) == {"fgsm", "pgd"} and "auc_drop" in robust["adversarial"]["fgsm"]["4"]
    drift = metrics["drift"]["datasets"]["demo"]  # the share counts the columns drifted without a test too
    assert metrics["drift"]["drifted_share"] == drift["drifted_share"]
    assert drift["drifted_share"] == pytest.approx(drift["drifted_columns"] / drift["columns_counted"])


def test_missing_upstream_output_is_a_clear_error(tmp_path: Path) -> None:
    params = tiny_params(tmp_path)
    layout = Layout.from_params(params, tmp_path)
    with pytest.raises(StageError, match="faces index not found"):
        train.run(params, layout, "mesonet")
    with pytest.raises(StageError, match="predictions of model"):
        ensemble.run(params, layout)
    with pytest.raises(StageError, match="ensemble output not found"):
        evaluate.run(params, layout)


def test_resume_after_a_crash_gives_identical_weights(chained: tuple[Path, Layout], tmp_path: Path) -> None:
    root, layout = chained
    params = tiny_params(root, train={"epochs": 2})
    spec, cfg = params.models["mesonet"], params.train
    straight = train.train_model("mesonet", spec, cfg, layout.faces_index, tmp_path / "straight", progress=False)

    class Killed(Exception):
        pass

    def crash(epoch: int, _: dict) -> None:
        if epoch == 0:
            raise Killed  # stands in for a killed process: last.pt of epoch 0 is on disk

    with pytest.raises(Killed):
        train.train_model("mesonet", spec, cfg, layout.faces_index, tmp_path / "resumed", crash, progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 0
    resumed = train.train_model("mesonet", spec, cfg, layout.faces_index, tmp_path / "resumed", progress=False)
    a = load_checkpoint(straight.last)["state_dict"]
    b = load_checkpoint(resumed.last)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(resumed.summary["history"]) == 2
