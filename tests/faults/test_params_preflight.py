"""Issue 12, items 8 and 10 and the small ones: every name and device checked when params load, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfd.platform.config import Params, load_params
from dfd.platform.errors import ConfigError
from tasks.preflight import check_device, check_params, params_problems
from tests.helpers import PROJECT


def _dfd(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DFD_PARAMS_OVERRIDE", None)
    return subprocess.run(["dfd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("dfd: error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_the_project_params_pass() -> None:
    assert params_problems(load_params(PROJECT / "params.yaml")) == []
    assert params_problems(load_params(PROJECT / "params.yaml", [PROJECT / "configs" / "demo.yaml"])) == []


@pytest.mark.parametrize(("section", "needle"), [
    ({"models": {"resnet": {}}}, "models.resnet.arch: unknown architecture 'resnet'"),
    ({"models": {"x": {"arch": "xception", "kwargs": {"widht": 0.5}}}}, "'xception' takes no argument 'widht'"),
    ({"train": {"augment": ["hflip", "jpg"]}}, "train.augment: unknown augmentation 'jpg'"),
    ({"train": {"batch_augment": ["mixupp"]}}, "train.batch_augment: unknown batch augmentation 'mixupp'"),
    ({"faces": {"detector": "retinaface"}}, "faces.detector: unknown face detector 'retinaface'"),
    ({"faces": {"fallback": ["dlib_hog", "s3fd"]}}, "faces.fallback: unknown face detector 's3fd'"),
    ({"evaluate": {"robustness": {"jpeg": [50], "fog": [1]}}}, "evaluate.robustness: unknown perturbation 'fog'"),
    ({"evaluate": {"robustness": {"jpeg": [150]}}}, "evaluate.robustness.jpeg: levels [150.0] are invalid"),
    ({"evaluate": {"datasets": [{"name": "x", "adapter": "celeb", "root": "r"}]}},
     "evaluate.datasets[0].adapter: unknown dataset adapter 'celeb'"),
    ({"data": {"adapter": "ffpp2"}}, "data.adapter: unknown dataset adapter 'ffpp2'"),
    ({"train": {"device": "tpu"}}, "train.device: 'tpu'"),
])
def test_each_unknown_name_is_one_problem(section: dict, needle: str) -> None:
    problems = params_problems(Params.model_validate(section))
    assert len(problems) == 1 and needle in problems[0], problems
    with pytest.raises(ConfigError, match=r"fix params\.yaml"):
        check_params(Params.model_validate(section))


def test_perturbations_as_a_mapping_of_levels_are_checked_by_name() -> None:
    # EVAL-B turns evaluate.robustness into {perturbation: levels}; the check reads names from either shape.
    from tasks.preflight import _names

    assert _names({"jpeg_50": [50, 30], "fog": [1]}) == ["jpeg_50", "fog"]
    assert _names(["jpeg_50"]) == ["jpeg_50"]


def test_a_cuda_device_this_machine_lacks_is_refused() -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problem = check_device(f"cuda:{count + 6}")
    assert problem is not None and f"cuda:{count + 6}" in problem
    assert check_device("cpu") is None and check_device("auto") is None


def test_cli_refuses_bad_names_before_any_work(tmp_path: Path) -> None:
    # No dataset exists here: a run that got past the params check would fail on the data instead.
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"]["device"] = "cuda:7"
    params["models"]["xception"]["kwargs"] = {"widht": 0.5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (["run"], ["stage", "ingest"], ["config"]):
        line = _one_error_line(_dfd(args, tmp_path))
        assert "cuda:7" in line and "widht" in line, line
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()  # no work started


def test_empty_params_file_is_refused_and_explicit_defaults_are_allowed(tmp_path: Path) -> None:
    empty = tmp_path / "params.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"is empty .*GPU-sized"):
        load_params(empty)
    empty.write_text("{}\n")
    assert load_params(empty) == Params()
    empty.write_text("")
    line = _one_error_line(_dfd(["stage", "ingest"], tmp_path))
    assert "params.yaml is empty" in line


def test_missing_override_names_override(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="--override") as err:
        load_params(tmp_path / "params.yaml", [tmp_path / "nope.yaml"])
    assert "--params" not in str(err.value)
    line = _one_error_line(_dfd(["--override", "nope.yaml", "config"], tmp_path))
    assert "nope.yaml" in line and "--override" in line
