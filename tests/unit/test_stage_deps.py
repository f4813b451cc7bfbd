"""dvc.yaml lists every module a stage runs: `dvc repro` must rerun a stage when code it reads changes (a register
stage without champion.py among its deps kept an old verdict after the champion test changed)."""

from __future__ import annotations

import pytest
import yaml

from dfd.platform.stage_cache import code_files
from tests.helpers import PROJECT

#: Each dvc.yaml stage and the modules `dfd stage NAME` runs (flows/stage_inputs.py names the same).
STAGE_MODULES = {"ingest": ["tasks.ingest"], "faces": ["tasks.faces"], "train": ["tasks.train", "flows.train_process"],
                 "ensemble": ["tasks.ensemble"], "evaluate": ["tasks.evaluate"], "register": ["tasks.register"]}
#: What the rule covers: the building blocks whose logic decides a stage's outputs. dfd/platform (config, paths,
#: files, tracking) is infrastructure; its values reach stages as params.
COVERED = ("dfd/data/", "dfd/training/", "dfd/evaluation/", "dfd/serving/", "dfd/monitoring/", "tasks/", "flows/",
           "models/")


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_every_module_a_stage_runs_is_among_its_dvc_deps(stage: str) -> None:
    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][stage]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("do", spec)["deps"]]
    files = {p.relative_to(PROJECT).as_posix() for p in code_files(STAGE_MODULES[stage], PROJECT)}
    needed = {f for f in files if f.startswith(COVERED) and not f.endswith("__init__.py")}
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage} lacks deps {missing}"
