"""Cross-dataset evaluation: further datasets ingested and face-extracted like the training set, one table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dfd.data.demo_data import generate
from dfd.evaluation.cross_dataset import cross_dataset_table, dataset_row
from dfd.platform.config import load_params
from dfd.platform.errors import ConfigError
from dfd.platform.layout import Layout
from tasks import evaluate
from tasks.eval_datasets import eval_layout, prepare
from tests.helpers import PROJECT, TINY, tiny_params

NO_ATTACKS = {"attacks": []}  # attacks are tested elsewhere; here they would only cost time


@pytest.fixture(scope="module")
def second_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another demo dataset (other seed, other people) standing in for a foreign dataset."""
    root = tmp_path_factory.mktemp("demo2") / "raw"
    p = load_params(PROJECT / "params.yaml", [TINY]).demo_data
    generate(root, seed=7, identities=6, images_per_identity=2, videos=2, frames_per_video=p.frames_per_video,
             image_size=p.image_size)
    return root


def _project(trained_project: Path, tmp_path: Path, datasets: list[dict]) -> tuple[object, Layout]:
    root = tmp_path / "p"
    shutil.copytree(trained_project, root)  # the session's project is shared: change a copy
    params = tiny_params(root, evaluate={"datasets": datasets, "adversarial": NO_ATTACKS})
    return params, Layout.from_params(params, root)


def test_the_table_rows_are_datasets_and_columns_metrics() -> None:
    frames = pd.DataFrame({"sample_id": ["a", "a", "b", "c"], "label": [1, 1, 0, 0], "prob": [0.9, 0.7, 0.2, 0.8],
                           "method": ["swap", "reenact", "real", "real"]})
    rows = {"train": dataset_row(frames, 0.5, "test split"), "other": dataset_row(frames.assign(prob=0.5), 0.5, "x")}
    table = cross_dataset_table(rows)
    assert list(table.index) == ["train", "other"] and list(table.columns[:3]) == ["role", "n", "auc"]
    assert table.loc["train", "auc"] == 0.75 and table.loc["other", "auc"] == 0.5
    assert table.loc["train", "video_n"] == 3 and table.loc["train", "fake_frames"] == 2
    assert table.loc["train", "method_auc"] == {"swap": 1.0, "reenact": 0.5}  # 0.7 beats 0.2, not 0.8


def test_two_datasets_give_one_table(trained_project: Path, second_demo: Path, tmp_path: Path) -> None:
    params, layout = _project(trained_project, tmp_path,
                              [{"name": "demo2", "adapter": "folder", "root": str(second_demo)}])
    res = evaluate.run(params, layout)
    reports = layout.reports_dir
    cross = json.loads((reports / "cross_dataset.json").read_text())
    rows = {r["dataset"]: r for r in cross["rows"]}
    assert list(rows) == ["demo", "demo2"] and cross["columns"][:3] == ["role", "n", "auc"]
    assert rows["demo"]["role"] == "test split" and rows["demo2"]["role"] == "cross-dataset"
    index = pd.read_parquet(layout.workdir / "eval" / "demo2" / "faces" / "index.parquet")
    assert rows["demo2"]["n"] == len(index)  # every sample of a foreign dataset is scored
    # The test split's row is the scorecard's: the ensemble's test AUC, and each member's own.
    metrics = res.metrics
    assert rows["demo"]["auc"] == pytest.approx(metrics["ensemble"]["auc"], abs=1e-9)
    assert rows["demo"]["member_auc"] == pytest.approx({m: metrics["members"][m]["auc"] for m in params.models})
    for row in rows.values():
        # One manipulation method (the demo's blends): the pooled AUC is that method's AUC against all reals.
        assert row["method_auc"] == {"blend": pytest.approx(row["auc"], abs=1e-9)}
        # Each member (the real-only sbi among them) has its own AUC on every dataset: who generalises.
        assert set(row["member_auc"]) == set(params.models)
    assert res.metrics["cross_dataset"]["demo2"]["auc"] == rows["demo2"]["auc"]
    assert (reports / "plots" / "cross_dataset.png").stat().st_size > 1000
    # The foreign set has its own drift and quality reports against the training crops.
    assert {p.name for p in (reports / "evidently").iterdir()} == {"drift_demo.html", "quality_demo.html",
                                                                   "drift_demo2.html", "quality_demo2.html"}
    drift = res.metrics["drift"]["datasets"]["demo2"]  # the share counts the columns drifted without a test too
    assert drift["drifted_columns"] == drift["evidently_drifted_columns"] + len(drift["constant_drifted"])
    assert drift["drifted_share"] == pytest.approx(drift["drifted_columns"] / drift["columns_counted"])
    # Incremental like the training set: a second preparation extracts nothing again.
    prepare(params, layout, params.evaluate.datasets[0])
    faces_report = json.loads(eval_layout(layout, params.evaluate.datasets[0]).faces_report.read_text())
    assert faces_report["extracted"] == 0 and faces_report["skipped"] == faces_report["samples"]


def test_ffpp_and_demo_as_two_datasets(trained_project: Path, second_demo: Path, ffpp_sample: Path,
                                       tmp_path: Path) -> None:
    params, layout = _project(trained_project, tmp_path,
                              [{"name": "ffpp", "adapter": "ffpp", "root": str(ffpp_sample)},
                               {"name": "demo2", "adapter": "folder", "root": str(second_demo)}])
    evaluate.run(params, layout)
    cross = json.loads((layout.reports_dir / "cross_dataset.json").read_text())
    assert [r["dataset"] for r in cross["rows"]] == ["demo", "ffpp", "demo2"]
    ffpp = cross["rows"][1]
    assert ffpp["real_frames"] > 0 and ffpp["fake_frames"] > 0
    # Pooled over the four methods, the AUC is their fake-count-weighted mean (each method's fakes against all
    # reals), so it lies between the lowest and the highest.
    assert min(ffpp["method_auc"].values()) - 1e-9 <= ffpp["auc"] <= max(ffpp["method_auc"].values()) + 1e-9
    assert set(ffpp["method_auc"]) == {"Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"}


def test_an_evaluation_dataset_named_like_the_training_set_is_refused(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, evaluate={"datasets": [{"name": "demo", "root": "x"}]})
    with pytest.raises(ConfigError, match="'demo' is the training dataset's name"):
        evaluate.run(params, Layout.from_params(params, tmp_path))


def test_duplicate_dataset_names_and_unknown_perturbations_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names must be unique"):
        tiny_params(tmp_path, evaluate={"datasets": [{"name": "a", "root": "x"}, {"name": "a", "root": "y"}]})
    params = tiny_params(tmp_path, evaluate={"robustness": {"jpg": [50]},
                                             "datasets": [{"name": "other", "root": str(tmp_path / "none")}]})
    with pytest.raises(ConfigError, match="unknown robustness perturbation 'jpg'"):
        evaluate.run(params, Layout.from_params(params, tmp_path))  # not "dataset root not found" after ingest
