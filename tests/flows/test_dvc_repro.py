"""`dvc repro` runs every stage in a fresh copy of the project; a second `dvc repro` does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfd.platform.config import load_params
from tests.helpers import PROJECT, TINY

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_dvc_repro_twice(tmp_path: Path, tiny_dataset: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT, capture_output=True,
                           text=True, check=True).stdout.split()
    clone = tmp_path / "clone"
    for rel in files:
        src = PROJECT / rel
        if src.is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            (clone / rel).write_bytes(src.read_bytes())
    # The clone's params.yaml holds the tiny values, so DVC tracks them like any user edit; members are removed by
    # an override (`models: {sbi: null, ...}`): `dvc repro` runs the rest (dvc.yaml names no member). Two members
    # stay, the two the rerun checks below name: each further one only costs another training process.
    drop = tmp_path / "drop.yaml"
    dropped = ("sbi", "xception", "efficientnet")
    drop.write_text(yaml.safe_dump({"models": dict.fromkeys(dropped)}))
    tiny = load_params(clone / "params.yaml", [TINY, drop]).model_dump(mode="json")
    assert set(tiny["models"]) == {"mesonet", "f3net"}
    (clone / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DFD_PARAMS_OVERRIDE", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        _run(cmd, clone, env)
    # The session's tiny dataset is what `dfd demo-data` writes with these params (seed 0); `dfd demo-data` itself
    # is tested in tests/unit/test_cli.py and tests/data/test_demo_data.py.
    shutil.copytree(tiny_dataset, clone / tiny["data"]["root"])

    first = _run(["dvc", "repro"], clone, env)
    for stage in ("ingest", "faces", "recipes", *(f"train@{m}" for m in tiny["models"]), "ensemble", "evaluate",
                  "register"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    assert not [m for m in dropped if f"train@{m}" in first.stdout]
    assert (clone / "artifacts" / "registry.json").is_file()
    # `dvc repro` tags the version with the same lineage as a flow run (both call run_lineage).
    from dfd.data.provenance import run_lineage
    from mlflow import MlflowClient

    uri = f"sqlite:///{clone / 'mlflow.db'}"
    version = MlflowClient(uri, registry_uri=uri).get_model_version("deepfake-ensemble", "1")
    lineage = run_lineage(load_params(clone / "params.yaml"), clone / "data" / "manifests" / "ingest_report.json",
                          clone)
    assert {"git_commit", "params_hash", "dvc_data_hash", "dataset"} <= set(lineage)
    assert {k: version.tags.get(k) for k in lineage} == lineage
    second = _run(["dvc", "repro"], clone, env)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout + second.stderr
    status = _run(["dvc", "status"], clone, env)
    assert "up to date" in status.stdout

    # Changing one model's params reruns that model and what depends on it, nothing upstream. (It also gives mesonet
    # a recipe of its own augmentations, for the check below.)
    tiny["models"]["mesonet"]["lr"] = 0.001
    tiny["models"]["mesonet"]["augment"] = list(tiny["train"]["augment"])
    (clone / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    third = _run(["dvc", "repro"], clone, env)
    assert "Running stage 'train@mesonet'" in third.stdout and "Running stage 'ensemble'" in third.stdout
    assert "Running stage 'faces'" not in third.stdout and "Running stage 'train@f3net'" not in third.stdout

    # A `train:` field a recipe sets (mesonet's augment here, as sbi's in params.yaml) retrains only the members that
    # take it from `train:` (f3net), not the one whose recipe hides it.
    tiny["train"]["augment"] = [*tiny["train"]["augment"], "jpeg"]
    (clone / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    fourth = _run(["dvc", "repro", "train@mesonet", "train@f3net"], clone, env)  # and what they need, not downstream
    assert "Running stage 'recipes'" in fourth.stdout and "Running stage 'train@f3net'" in fourth.stdout
    assert "Running stage 'train@mesonet'" not in fourth.stdout
