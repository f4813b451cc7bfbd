"""Issue 12, items 1 (faces side), 4, 5 and 6: no silently stale data, no user data overwritten, caches repaired."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dfd.data.demo_data import DEMO_MARKER, generate
from dfd.data.provenance import run_lineage
from dfd.platform.config import Params
from dfd.platform.errors import DataError, StageError
from dfd.platform.files import atomic_path, write_json
from dfd.platform.layout import Layout
from tasks import faces, ingest
from tests.helpers import PROJECT, tiny_params, write_clip

SMALL = {"identities": 2, "images_per_identity": 1, "videos": 0, "frames_per_video": 2, "image_size": 96}


def _dfd(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DFD_PARAMS_OVERRIDE", None)
    return subprocess.run(["dfd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_demo_data_never_writes_into_a_real_dataset(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    (user / "real").mkdir(parents=True)
    (user / "real" / "id000_0.png").write_bytes(b"my photo")
    (user / "metadata.json").write_text('{"mine": true}')
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="refusing to write the demo dataset"):
        generate(user, seed=0, **SMALL)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    # Through the CLI (and `dfd demo`, which generates where data.root points when metadata.json is missing).
    (tmp_path / "params.yaml").write_text(f"data: {{root: {user}}}\ndemo_data: {json.dumps(SMALL)}\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text(f"data: {{root: {user}}}\n")
    (user / "metadata.json").unlink()
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    for args in (["demo-data"], ["demo"]):
        res = _dfd(args, tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert next(ln for ln in res.stderr.splitlines() if ln.startswith("dfd: error:")).count("refusing") == 1
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before


def test_demo_data_regenerates_its_own_folder_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    generate(out, seed=0, **{**SMALL, "identities": 3})
    generate(out, seed=1, **SMALL)  # fewer identities: nothing of the first dataset may be left behind
    meta = json.loads((out / "metadata.json").read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(meta) | {"metadata.json", DEMO_MARKER}
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, seed=0, **SMALL)
    assert (empty / DEMO_MARKER).is_file()


def test_failed_ingest_leaves_no_stale_manifest_for_register(tiny_project: Path) -> None:
    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    ingest.run(params, layout)
    assert run_lineage(params, layout.ingest_report, tiny_project)["dvc_data_hash"].endswith(".dir")
    for p in (tiny_project / "raw" / "real").glob("*.png"):
        p.write_bytes(b"")
    with pytest.raises(DataError):
        ingest.run(params, layout)
    report = json.loads(layout.ingest_report.read_text())
    assert report["status"] == "failed" and report["error"]
    assert not layout.manifest.exists()  # the previous manifest no longer describes the data: gone
    with pytest.raises(StageError, match="the last ingest failed"):
        run_lineage(params, layout.ingest_report, tiny_project)  # register cannot tag the old data hash


def test_ffpp_filters_matching_nothing_say_so(tmp_path: Path) -> None:
    root = tmp_path / "ffpp"
    write_clip(root / "original_sequences" / "youtube" / "c23" / "videos" / "004.mp4", 1)
    write_clip(root / "manipulated_sequences" / "Deepfakes" / "c23" / "videos" / "004_982.mp4", 2, fake=True)
    params = Params.model_validate({"data": {"name": "ffpp", "adapter": "ffpp", "root": str(root),
                                             "compression": "c40"}})
    layout = Layout.from_params(params, tmp_path)
    with pytest.raises(DataError) as err:
        ingest.run(params, layout)
    assert "no file matched" in str(err.value) and "c40" in str(err.value)
    assert "all 0 files are bad" not in str(err.value)


def test_a_corrupt_crop_or_faces_json_is_repaired_by_rerunning_faces(tiny_project: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import cv2

    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    ingest.run(params, layout)
    first = faces.run(params, layout)
    index = pd.read_parquet(first.index)
    bad_crop = layout.faces_index.parent / index[index["split"] == "test"]["crop"].iloc[0]
    bad_crop.write_bytes(bad_crop.read_bytes()[:-10])  # torn: its size no longer the one recorded at write
    other = index[index["crop"] != index[index["split"] == "test"]["crop"].iloc[0]]["sample_id"].iloc[-1]
    done = layout.faces_dir / other / "faces.json"
    done.write_text(done.read_text()[:40])  # truncated, as by a kill mid-write before writes were atomic
    caplog.set_level("WARNING")
    second = faces.run(params, layout)
    assert second.extracted == 2 and second.crops == first.crops
    assert cv2.imread(str(bad_crop)) is not None
    assert json.loads(done.read_text())["frames"]
    assert str(done) in caplog.text and str(bad_crop) in caplog.text


def test_corrupt_last_checkpoint_is_discarded_not_a_traceback(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from tasks.train import _Progress, _resume

    last = tmp_path / "last.pt"
    torch.save({"fingerprint": "x", "epoch": 0}, last)
    last.write_bytes(last.read_bytes()[:50])
    model = torch.nn.Linear(2, 1)
    progress = _Progress(fingerprint="x")
    caplog.set_level("WARNING")
    _resume("m", last, progress, model, None, None)  # type: ignore[arg-type]
    assert not last.exists() and str(last) in caplog.text and progress.start_epoch == 0


def test_reports_are_atomic_and_readable_by_the_team(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "r" / "report.json", {"a": 1})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(write_json(tmp_path / "private.json", {}).stat().st_mode) == 0o600  # umask respected
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:  # a writer failing half-way through
        tmp.write_text('{"a": 2, "b"')
        raise RuntimeError("disk went away")
    assert json.loads(path.read_text()) == {"a": 1}  # a failed write keeps the old file
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # and leaves no temporary file


def test_validate_dataset_report_goes_beside_the_data_reports(tiny_project: Path) -> None:
    (tiny_project / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    cwd = tiny_project / "elsewhere"
    cwd.mkdir()
    res = _dfd(["--params", str(tiny_project / "params.yaml"), "validate-dataset", str(tiny_project / "raw")], cwd)
    assert res.returncode == 0, res.stderr
    assert list(cwd.glob("*.json")) == []
    expected = Path("data") / "manifests" / "raw.validation.json"
    assert f"report: {expected}" in res.stdout and (cwd / expected).is_file()
