"""Stage fingerprints (dfd/platform/stage_cache.py): what makes a stage rerun, and what does not."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dfd.platform.stage_cache import FileHasher, StageCache, StageInputs, code_files, code_hash
from tests.helpers import PROJECT


@dataclass(frozen=True)
class _Result:
    out: Path
    count: int
    scores: dict[str, float]


def _package(root: Path) -> None:
    pkg = root / "pkgx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkgx import b\nfrom .sub.c import f\n")
    (pkg / "b.py").write_text("X = 1\n")
    (pkg / "sub" / "c.py").write_text("from ..b import X\ndef f():\n    return X\n")
    (pkg / "d.py").write_text("Y = 2\n")


def test_code_files_follow_project_imports_only(tmp_path: Path) -> None:
    _package(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in code_files(["pkgx.a"], tmp_path, ("pkgx",))}
    assert files == {"pkgx/__init__.py", "pkgx/a.py", "pkgx/b.py", "pkgx/sub/__init__.py", "pkgx/sub/c.py"}

    hasher = FileHasher()
    before = code_hash(["pkgx.a"], hasher, tmp_path, ("pkgx",))
    (tmp_path / "pkgx" / "d.py").write_text("Y = 3\n")  # not imported by pkgx.a
    assert code_hash(["pkgx.a"], hasher, tmp_path, ("pkgx",)) == before
    (tmp_path / "pkgx" / "sub" / "c.py").write_text("from ..b import X\ndef f():\n    return X + 1\n")
    assert code_hash(["pkgx.a"], hasher, tmp_path, ("pkgx",)) != before


def test_code_files_of_the_train_stage() -> None:
    files = {p.relative_to(PROJECT).as_posix() for p in code_files(["tasks.train", "flows.train_process"])}
    assert {"tasks/train.py", "flows/train_process.py", "models/__init__.py", "dfd/training/engine.py",
            "dfd/platform/config.py"} <= files
    assert not {"dfd/cli.py", "tasks/register.py", "flows/pipeline.py"} & files


def _stage(root: Path, params: dict[str, object]) -> StageInputs:
    return StageInputs("train@m", params, (root / "data",), ("dfd.platform.stage_cache",), (root / "out" / "x",))


def test_stage_reruns_on_params_data_or_missing_outputs_only(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("a")
    (root / "out").mkdir()
    (root / "out" / "x").write_text("x")
    cache = StageCache(root / "artifacts", root)
    params = {"lr": 0.1}

    first = cache.check(_stage(root, params), _Result)
    assert not first.up_to_date and first.reason == "no record of a previous run"
    result = _Result(root / "out", 3, {"auc": float("nan"), "eer": 0.25})
    record = cache.save(first, _stage(root, params), result, "run-1")
    assert record == root / "artifacts" / ".stages" / "train_at_m.json"

    again = cache.check(_stage(root, params), _Result)
    assert again.up_to_date and again.fingerprint == first.fingerprint
    assert again.result.out == root / "out" and again.result.count == 3 and again.result.scores["eer"] == 0.25
    assert again.record["run_id"] == "run-1"

    # Same content, new modification time: still up to date (content is hashed, not times).
    st = (root / "data" / "a.txt").stat()
    os.utime(root / "data" / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.check(_stage(root, params), _Result).up_to_date

    # A moved project (paths are recorded relative to the root) is still up to date, at its new place.
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    hit = StageCache(moved / "artifacts", moved).check(_stage(moved, params), _Result)
    assert hit.up_to_date and hit.result.out == moved / "out"

    changed = cache.check(_stage(root, {"lr": 0.2}), _Result)
    assert not changed.up_to_date and changed.reason == "changed: params"

    (root / "data" / "b.txt").write_text("new sample")
    new_data = cache.check(_stage(root, params), _Result)
    assert not new_data.up_to_date and new_data.reason == "changed: dep data"
    (root / "data" / "b.txt").unlink()
    assert cache.check(_stage(root, params), _Result).up_to_date

    (root / "out" / "x").write_text("edited by hand")
    assert cache.check(_stage(root, params), _Result).reason == "outputs changed since"
    (root / "out" / "x").unlink()
    assert cache.check(_stage(root, params), _Result).reason == "outputs missing: out/x"


def test_hash_memo_survives_a_new_process_view(tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(b"0" * 1000)
    memo = tmp_path / "hashes.sqlite"
    h = FileHasher(memo)
    digest = h.file(f)
    h.save()
    # A fresh hasher trusts the remembered md5 while size, mtime and inode are unchanged (it does not re-read:
    # a planted digest comes back)...
    with sqlite3.connect(memo) as con:
        assert con.execute("UPDATE files SET md5 = 'planted' WHERE md5 = ?", (digest,)).rowcount == 1
    con.close()
    assert FileHasher(memo).file(f) == "planted"
    # ...and reads the file again when they change.
    f.write_bytes(b"1" * 1000)
    assert FileHasher(memo).file(f) != digest


def test_a_train_field_a_recipe_sets_reruns_only_the_models_that_read_it(tmp_path: Path) -> None:
    from dfd.platform.layout import Layout
    from flows import stage_inputs
    from tests.helpers import tiny_params

    def slices(**train: object) -> dict[str, dict[str, Any]]:
        params = tiny_params(tmp_path, train=train)
        layout = Layout.from_params(params, tmp_path)
        return {m: stage_inputs.train(params, layout, m).params for m in params.models}

    before, after = slices(), slices(augment=["hflip", "jpeg"])
    assert before["sbi"] == after["sbi"]  # its recipe sets `augment`: train.augment is not what it reads
    assert before["mesonet"] != after["mesonet"]  # it takes `augment` from `train:`
    assert slices(weight_decay=0.01)["sbi"] != before["sbi"]  # what it does read still reruns it



def test_the_recipes_stage_writes_what_dvc_decides_train_reruns_by(tmp_path: Path) -> None:
    """DVC's side of the same rule: `dfd stage recipes` writes each model's training inputs, and a file whose
    content did not change leaves that model's training alone (train@M depends on its file in dvc.yaml)."""
    from dfd.platform.layout import Layout
    from flows import stage_inputs
    from tasks import recipes
    from tests.helpers import tiny_params

    params = tiny_params(tmp_path)
    layout = Layout.from_params(params, tmp_path)
    paths = recipes.run(params, layout)
    assert sorted(p.stem for p in paths) == sorted(params.models)
    before = {p.stem: p.read_bytes() for p in paths}
    assert json.loads(before["sbi"]) == stage_inputs.train(params, layout, "sbi").params  # the flow's rule too
    changed = tiny_params(tmp_path, train={"augment": ["hflip", "jpeg"]}, models={"mesonet": None})
    after = {p.stem: p.read_bytes() for p in recipes.run(changed, layout)}
    assert after["sbi"] == before["sbi"] and after["f3net"] != before["f3net"]
    assert "mesonet" not in after and not recipes.recipe_path(layout, "mesonet").exists()  # a removed member


@pytest.mark.slow
def test_new_data_reruns_ingest_and_faces_for_the_new_sample_only(tiny_project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's ingest and faces tasks (their functions, without a flow run) on a real sqlite MLflow store."""
    import cv2

    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from flows.stages import faces_task, ingest_task
    from tests.helpers import tiny_params

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tiny_project
    params = tiny_params(root, mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"})
    layout = Layout.from_params(params, root)
    tracker = Tracker.from_params(params, root)

    def both() -> tuple[Any, Any, dict[str, str]]:
        with tracker.run("pipeline") as parent:
            ing = ingest_task.fn(params, layout, tracker, parent)
            fac = faces_task.fn(params, layout, tracker, parent)
        cache = StageCache(layout.artifacts, root)
        return ing, fac, {s: cache.record(s)["finished_at"] + cache.record(s)["fingerprint"]
                          for s in ("ingest", "faces")}

    ing1, fac1, rec1 = both()
    assert fac1.extracted > 0 and fac1.skipped == 0
    ing2, fac2, rec2 = both()
    assert (ing2, fac2, rec2) == (ing1, fac1, rec1)  # the recorded results, and no new record: nothing ran

    image = cv2.imread(str(sorted((root / "raw" / "real").glob("*.png"))[0]))
    image[0, 0] = 255 - image[0, 0]  # new bytes: not a duplicate of the sample it was made from
    cv2.imwrite(str(root / "raw" / "real" / "id999_0.png"), image)
    ing3, fac3, rec3 = both()
    assert ing3.samples == ing1.samples + 1
    assert fac3.extracted == 1 and fac3.skipped == fac1.extracted
    assert rec3["ingest"] != rec1["ingest"] and rec3["faces"] != rec1["faces"]
