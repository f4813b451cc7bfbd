"""A dataset of reals only: usable when every model trains real_only, refused clearly otherwise; evaluate with no
real fake anywhere fails with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dfd.data.validation import validate
from dfd.platform.errors import DataError, StageError
from dfd.platform.layout import Layout
from tasks import evaluate, ingest
from tests.helpers import PROJECT, tiny_params

ALL_REAL_ONLY = {k: {"train_on": "real_only"} for k in ("mesonet", "xception", "efficientnet", "f3net", "sbi")}


@pytest.fixture
def reals_only(tmp_path: Path, tiny_dataset: Path) -> Path:
    """The tiny dataset without its fakes (files and metadata entries), at `tmp_path/raw`."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_dataset, raw)
    shutil.rmtree(raw / "fake")
    meta = json.loads((raw / "metadata.json").read_text())
    (raw / "metadata.json").write_text(json.dumps({k: v for k, v in meta.items() if v["label"] == 0}))
    return tmp_path


def test_reals_only_dataset_passes_when_every_model_is_real_only(reals_only: Path) -> None:
    params = tiny_params(reals_only, models=ALL_REAL_ONLY)
    assert ingest.all_real_only(params)
    result = ingest.run(params, Layout.from_params(params, reals_only))
    report = json.loads(result.report.read_text())
    assert report["status"] == "ok" and report["classes"] == {"real": result.samples, "fake": 0}
    assert "every model trains real_only" in report["reals_only"]
    checked = validate(reals_only / "raw", params.data, progress=False, real_only=True)
    assert not checked.errors and any("no fake samples: accepted" in w for w in checked.warnings)


def test_reals_only_dataset_fails_clearly_when_a_model_needs_fakes(reals_only: Path) -> None:
    params = tiny_params(reals_only)  # four members train on both classes
    assert not ingest.all_real_only(params)
    with pytest.raises(DataError, match=r"only 0 usable fake samples.*train_on: real_only"):
        ingest.run(params, Layout.from_params(params, reals_only))
    checked = validate(reals_only / "raw", params.data, progress=False)
    assert checked.errors == ["no usable fake samples (a dataset of reals only is usable when every model trains "
                              "`train_on: real_only`)"]


def test_evaluate_without_real_fakes_fails_with_one_line(trained_project: Path, tmp_path: Path) -> None:
    params = tiny_params(trained_project)
    layout = Layout.from_params(params, trained_project)
    index = pd.read_parquet(layout.faces_index)
    no_test_fakes = tmp_path / "index.parquet"
    index[~((index["split"] == "test") & (index["label"] == 1))].to_parquet(no_test_fakes, index=False)
    with pytest.raises(StageError, match="no real fake to judge the ensemble on") as err:
        evaluate.evaluate(params.evaluate, layout.ensemble_dir, {m: layout.model_dir(m) for m in params.models},
                          no_test_fakes, tmp_path / "reports")
    assert "\n" not in str(err.value) and "evaluate.allow_synthetic_test" in str(err.value)
    assert not (tmp_path / "reports").exists()  # failed before writing anything


def test_cli_validate_dataset_follows_the_models_in_params(reals_only: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from dfd.cli import main

    override = reals_only / "real_only.yaml"
    override.write_text(yaml.safe_dump({"models": ALL_REAL_ONLY}))
    base = ["--params", str(PROJECT / "params.yaml"), "--override", str(PROJECT / "tests" / "params.tiny.yaml")]
    check = ["validate-dataset", str(reals_only / "raw"), "--report", str(reals_only / "v.json")]
    assert main([*base, "--override", str(override), *check]) == 0
    assert "no fake samples: accepted" in capsys.readouterr().out
    assert main([*base, *check]) == 1
    assert "error: no usable fake samples" in capsys.readouterr().out


def test_a_reals_only_run_end_to_end_judges_sbi_fakes_only_when_allowed(reals_only: Path) -> None:
    from tasks import ensemble, faces, train

    only_sbi = {"models": {k: None for k in ("mesonet", "xception", "efficientnet", "f3net")}}
    params = tiny_params(reals_only, **only_sbi)
    layout = Layout.from_params(params, reals_only)
    ingest.run(params, layout)
    faces.run(params, layout)
    res = train.run(params, layout, "sbi", progress=False)
    assert res.summary["eval_fakes"]["val"].startswith("sbi(seed=")  # no real fake anywhere: SBI-made, fixed
    ensemble.run(params, layout)
    with pytest.raises(StageError, match="no real fake to judge the ensemble on"):
        evaluate.run(params, layout)
    allowed = tiny_params(reals_only, **only_sbi, evaluate={"allow_synthetic_test": True})
    metrics = evaluate.run(allowed, layout).metrics
    assert metrics["test_fakes"] == "sbi" and "allow_synthetic_test" in metrics["gate_judged_on"]
    assert metrics["robustness"] == {} and metrics["adversarial"] == {}  # SBI fakes are not on disk to perturb
