"""Evidently reports: their sections, the drift share read from them, and a failure that fails the stage."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfd.evaluation.drift import ReportError, drift_report, embedding_columns, quality_report
from dfd.platform.layout import Layout
from tasks import evaluate
from tests.helpers import tiny_params


def test_the_drift_share_is_read_from_the_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"brightness": rng.normal(100, 10, 300), "contrast": rng.normal(40, 5, 300),
                        "flat": np.ones(300)})
    cur = pd.DataFrame({"brightness": rng.normal(140, 10, 200), "contrast": rng.normal(40, 5, 200),
                        "flat": np.ones(200)})
    out = drift_report(ref, cur, tmp_path / "drift.html")
    # brightness moved, contrast did not, flat is the same constant on both sides: 1 of 3 columns
    assert out["drifted_share"] == pytest.approx(1 / 3) and out["drifted_columns"] == 1
    assert out["constant_unchanged"] == ["flat"] and out["constant_drifted"] == {}
    assert out["columns"]["brightness"]["score"] < out["columns"]["brightness"]["threshold"]  # K-S p-value
    html = (tmp_path / "drift.html").read_text()  # Evidently's own count, over the columns it could test
    shown = re.search(r"Drift is detected for ([\d.]+)% of columns \((\d+) out of (\d+)\)", html)
    assert shown and (shown[2], shown[3]) == ("1", "2") and out["evidently_drifted_columns"] == 1


def test_a_column_collapsing_to_a_constant_on_one_side_counts_as_drifted(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"brightness": rng.normal(100, 10, 300), "contrast": rng.normal(40, 5, 300),
                        "sharpness": rng.normal(50, 5, 300), "saturation": np.full(300, 7.0),
                        "emb_0": np.full(300, 1.0), "emb_1": np.full(300, np.nan)})
    cur = pd.DataFrame({"brightness": rng.normal(100, 10, 200), "contrast": rng.normal(40, 5, 200),
                        "sharpness": np.zeros(200),  # every crop blurred to nothing: collapsed to a constant
                        "saturation": rng.normal(90, 5, 200),  # a constant in training that now varies
                        "emb_0": np.full(200, 1.0), "emb_1": np.full(200, np.nan)})
    out = drift_report(ref, cur, tmp_path / "drift.html")
    assert set(out["constant_drifted"]) == {"sharpness", "saturation"}
    assert "current data only" in out["constant_drifted"]["sharpness"]
    assert out["constant_unchanged"] == ["emb_0"] and out["skipped_empty"] == ["emb_1"]
    assert out["columns_counted"] == 5 and out["drifted_columns"] == 2  # brightness and contrast held still
    assert out["drifted_share"] == pytest.approx(2 / 5)  # before: both dropped, and the share read 0 of 2


def test_the_quality_report_holds_its_sections(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    frames = pd.DataFrame({"label": labels, "prob": np.clip(labels * 0.4 + rng.uniform(0, 0.6, 200), 0, 1)})
    out = quality_report(frames.iloc[100:], frames.iloc[:100], 0.5, tmp_path / "quality.html")
    from sklearn.metrics import roc_auc_score

    cur = frames.iloc[100:]  # Evidently's numbers are those of the current frames
    assert out["RocAuc"] == pytest.approx(roc_auc_score(cur["label"], cur["prob"]), abs=1e-6) and out["RocAuc"] > 0.5
    assert out["Accuracy"] == pytest.approx(((cur["prob"] >= 0.5) == cur["label"]).mean(), abs=1e-6)
    assert "LogLoss" in out
    html = (tmp_path / "quality.html").read_text()
    for section in ("Accuracy", "Precision", "Recall", "F1", "ROC", "Confusion"):
        assert section in html, section


def test_embeddings_are_projected_on_the_reference_axes() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(0, 1, (50, 16)), rng.normal(3, 1, (20, 16))
    r, c = embedding_columns(ref, {"x": cur}, dims=4)
    assert list(r.columns) == list(c["x"].columns) == ["emb_0", "emb_1", "emb_2", "emb_3"]
    assert len(c["x"]) == 20 and abs(r.to_numpy().mean()) < 1e-9  # centred on the reference


def test_a_failed_evidently_report_fails_the_stage_and_leaves_no_html(trained_project: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import evidently

    root = tmp_path / "p"
    shutil.copytree(trained_project, root)
    params = tiny_params(root, evaluate={"adversarial": {"attacks": []}})
    layout = Layout.from_params(params, root)
    assert (layout.reports_dir / "evidently" / "drift_demo.html").is_file()  # from the fixture's evaluate

    def broken(self: object, *args: object, **kwargs: object) -> None:
        raise ValueError("histogram bins must be positive")

    monkeypatch.setattr(evidently.Report, "run", broken)
    with pytest.raises(ReportError, match=r"Evidently data-drift report drift_demo.html failed: ValueError: "
                                          r"histogram bins must be positive"):
        evaluate.run(params, layout)
    assert not list(layout.reports_dir.rglob("*.html")) and not list(layout.reports_dir.rglob("*.tmp"))


def test_the_stage_reports_drift_of_the_test_split_against_training(trained_project: Path) -> None:
    reports = Layout.from_params(tiny_params(trained_project), trained_project).reports_dir
    drift = json.loads((reports / "metrics.json").read_text())["drift"]
    test = drift["datasets"]["demo"]
    assert drift["reference"] == "train split" and drift["drifted_share"] == test["drifted_share"]
    emb = [c for c in test["columns"] if c.startswith("emb_")]
    seen = set(test["columns"]) | set(test["constant_drifted"]) | set(test["constant_unchanged"])
    assert {"brightness", "contrast"} <= seen and emb
    assert "RocAuc" in test["quality"] and (reports / "evidently" / "quality_demo.html").is_file()
    # One row per sample (a video's crops averaged), not per crop: frames of a video are no independent draws.
    index = pd.read_parquet(trained_project / "data" / "faces" / "index.parquet")
    crops = index[index["split"] == "test"]
    assert drift["rows"] == "one per sample" and len(crops) <= tiny_params(trained_project).evaluate.drift_max_crops
    assert test["current_rows"] == crops["sample_id"].nunique()
