"""The CLI's contract: one clear line and exit code 2 for bad input, never a library traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT


def _dfd(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DFD_PARAMS_OVERRIDE", None)
    # A private Prefect home: tests running at once must not share (and lock) one ~/.prefect/prefect.db.
    env["PREFECT_HOME"] = str(cwd / ".prefect")
    return subprocess.run(["dfd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    return tmp_path


def _one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("dfd: error:")]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_dataset(project: Path) -> None:
    _one_line_error(_dfd(["stage", "ingest"], project), "dataset root not found", "dfd demo-data")
    _one_line_error(_dfd(["run"], project), "dataset root not found")


def test_empty_class_folder(project: Path) -> None:
    (project / "data" / "raw" / "demo" / "real").mkdir(parents=True)
    (project / "data" / "raw" / "demo" / "fake").mkdir()
    (project / "data" / "raw" / "demo" / "real" / "a.png").write_bytes(b"x")
    _one_line_error(_dfd(["run"], project), "'fake/'", "empty")


def test_unknown_param_key(project: Path) -> None:
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\nepochs: 3\n")
    _one_line_error(_dfd(["run"], project), "unknown key 'epochs'", "params.yaml")


def test_stage_out_of_order(project: Path) -> None:
    _one_line_error(_dfd(["stage", "ensemble"], project), "predictions of model", "dfd stage train")


def test_demo_data_writes_where_params_point(project: Path, tmp_path: Path) -> None:
    override = tmp_path / "small.yaml"
    override.write_text("demo_data: {identities: 2, images_per_identity: 1, videos: 0, image_size: 96}\n")
    res = _dfd(["--override", str(override), "demo-data", "--seed", "3"], project)
    assert res.returncode == 0, res.stderr
    assert (project / "data" / "raw" / "demo" / "metadata.json").is_file()
    meta = json.loads((project / "data" / "raw" / "demo" / "metadata.json").read_text())
    labels = [entry["label"] for entry in meta.values()]
    # Two people, one image each, a fake of each, and each fake's donor face also shown as a real.
    assert f"{labels.count(0)} real, {labels.count(1)} fake" in res.stdout and labels.count(1) == 2


@pytest.mark.slow
def test_stage_failing_inside_the_flow_is_one_line_too(project: Path, tiny_dataset: Path) -> None:
    # Past the preflight: the dataset exists, but half its real samples are corrupt, so ingest stops the flow.
    import shutil

    data = project / "data" / "raw" / "demo"
    shutil.copytree(tiny_dataset, data)
    for path in sorted((data / "real").iterdir())[:12]:
        path.write_bytes(b"not an image")
    res = _dfd(["--override", str(PROJECT / "tests" / "params.tiny.yaml"), "run"], project)
    _one_line_error(res, "samples in", "are unusable", "ingest.max_bad_share", "ingest_report.json")
    assert (project / "data" / "manifests" / "ingest_report.json").is_file()  # the reasons are kept
