"""Dataset adapters on the real FaceForensics++ sample and on generated Celeb-DF and DFDC layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dfd.data.adapters import get_adapter
from dfd.data.validation import validate
from dfd.platform.config import DataParams, Params
from dfd.platform.errors import DataError
from dfd.platform.layout import Layout
from tasks import faces, ingest
from tests.helpers import PROJECT, write_clip


def test_ffpp_sample_adapter(ffpp_sample: Path) -> None:
    rows = {c.rel_path.split("/")[-1]: c for c in get_adapter("ffpp")(ffpp_sample, DataParams(adapter="ffpp"))}
    assert sorted(rows) == ["004.mp4", "004_982.mp4", "519.mp4", "519_515.mp4", "634.mp4", "634_660.mp4",
                            "750_743.mp4"]
    assert sum(c.label == 0 for c in rows.values()) == 3 and sum(c.label == 1 for c in rows.values()) == 4
    assert {rows[f].method for f in ("519_515.mp4", "750_743.mp4", "634_660.mp4", "004_982.mp4")} == {
        "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"}
    expected_split = {"004.mp4": "val", "519.mp4": "train", "634.mp4": "test", "519_515.mp4": "train",
                      "750_743.mp4": "train", "634_660.mp4": "test", "004_982.mp4": "val"}
    assert {f: c.split for f, c in rows.items()} == expected_split
    # A real video and its fakes share an identity; the fake whose original (750.mp4) is missing still ingests.
    assert rows["004.mp4"].identity == rows["004_982.mp4"].identity == "004_982"
    assert rows["750_743.mp4"].identity == "743_750" and rows["750_743.mp4"].problem is None
    only = list(get_adapter("ffpp")(ffpp_sample, DataParams(adapter="ffpp", methods=["FaceSwap"])))
    assert sorted(c.method for c in only) == ["FaceSwap", "original", "original", "original"]
    assert list(get_adapter("ffpp")(ffpp_sample, DataParams(adapter="ffpp", compression="c40"))) == []


def test_ffpp_ingest_and_faces(ffpp_sample: Path, tmp_path: Path) -> None:
    params = Params.model_validate({"data": {"name": "ffpp", "adapter": "ffpp", "root": str(ffpp_sample)},
                                    "faces": {"workers": 2}})
    layout = Layout.from_params(params, tmp_path)
    manifest = pd.read_parquet(ingest.run(params, layout).manifest)
    assert dict(manifest["split"].value_counts()) == {"train": 3, "val": 2, "test": 2}
    first = faces.run(params, layout)
    report = json.loads(first.report.read_text())
    assert report["frames_sampled"] == 7 * 32 and report["face_share"] >= 0.9
    second = faces.run(params, layout)
    assert second.extracted == 0 and second.skipped == 7 and second.crops == first.crops


def _celebdf(root: Path) -> None:
    write_clip(root / "Celeb-real" / "id0_0000.mp4", 1)
    write_clip(root / "Celeb-real" / "id1_0000.mp4", 2)
    write_clip(root / "Celeb-real" / "id2_0000.mp4", 3)
    write_clip(root / "YouTube-real" / "00001.mp4", 4)
    write_clip(root / "Celeb-synthesis" / "id0_id1_0000.mp4", 5, fake=True)
    write_clip(root / "Celeb-synthesis" / "id2_id0_0000.mp4", 6, fake=True)
    (root / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id2_id0_0000.mp4\n1 Celeb-real/id2_0000.mp4\n"
        "0 Celeb-synthesis/id9_id1_0000.mp4\n")


def test_celebdf_layout(tmp_path: Path) -> None:
    _celebdf(tmp_path)
    rows = {c.rel_path: c for c in get_adapter("celebdf")(tmp_path, DataParams(adapter="celebdf"))}
    assert rows["YouTube-real/00001.mp4"].label == 0 and rows["YouTube-real/00001.mp4"].split == "test"
    fake = rows["Celeb-synthesis/id2_id0_0000.mp4"]
    assert fake.label == 1 and fake.split == "test"
    assert rows["Celeb-synthesis/id0_id1_0000.mp4"].identity == "id0" and rows["Celeb-real/id0_0000.mp4"].split is None
    assert rows["Celeb-synthesis/id9_id1_0000.mp4"].problem == "named in List_of_testing_videos.txt but missing"
    params = Params.model_validate({"data": {"name": "celebdf", "adapter": "celebdf", "root": str(tmp_path)}})
    manifest = pd.read_parquet(ingest.run(params, Layout.from_params(params, tmp_path / "proj")).manifest)
    test = manifest[manifest["split"] == "test"]["path"]
    assert set(test) == {"YouTube-real/00001.mp4", "Celeb-synthesis/id2_id0_0000.mp4", "Celeb-real/id2_0000.mp4"}


def _dfdc(root: Path) -> None:
    part = root / "dfdc_train_part_0"
    for i, name in enumerate(["orig_a.mp4", "orig_b.mp4", "orig_c.mp4"]):
        write_clip(part / name, 10 + i)
    write_clip(part / "fake_a1.mp4", 20, fake=True)
    write_clip(part / "fake_a2.mp4", 21, fake=True)
    write_clip(part / "fake_b1.mp4", 22, fake=True)
    meta = {"orig_a.mp4": {"label": "REAL", "split": "train"}, "orig_b.mp4": {"label": "REAL", "split": "train"},
            "orig_c.mp4": {"label": "REAL", "split": "train"},
            "fake_a1.mp4": {"label": "FAKE", "split": "train", "original": "orig_a.mp4"},
            "fake_a2.mp4": {"label": "FAKE", "split": "train", "original": "orig_a.mp4"},
            "fake_b1.mp4": {"label": "FAKE", "split": "train", "original": "orig_b.mp4"},
            "fake_gone.mp4": {"label": "FAKE", "split": "train", "original": "orig_c.mp4"}}
    (part / "metadata.json").write_text(json.dumps(meta))


def test_dfdc_layout_keeps_fakes_with_their_originals(tmp_path: Path) -> None:
    _dfdc(tmp_path)
    params = Params.model_validate({"data": {"name": "dfdc", "adapter": "dfdc", "root": str(tmp_path)},
                                    "ingest": {"max_bad_share": 0.5}})
    res = ingest.run(params, Layout.from_params(params, tmp_path / "proj"))
    report = json.loads(res.report.read_text())
    gone = {"path": "dfdc_train_part_0/fake_gone.mp4", "reason": "named in metadata.json but missing"}
    assert report["bad"] == [gone]
    manifest = pd.read_parquet(res.manifest)
    split_of = dict(zip(manifest["path"].str.split("/").str[-1], manifest["split"], strict=True))
    assert split_of["fake_a1.mp4"] == split_of["fake_a2.mp4"] == split_of["orig_a.mp4"]
    assert split_of["fake_b1.mp4"] == split_of["orig_b.mp4"]
    # DFDC names no person: a sample's person is its original video, one cluster per original with its fakes.
    persons = dict(zip(manifest["path"].str.split("/").str[-1], manifest["persons"].map(list), strict=True))
    assert persons["fake_a1.mp4"] == persons["orig_a.mp4"] == ["orig_a"]
    assert report["clusters_total"] == 3 and report["split_scheme"] == "persons-1"
    assert sum(c["all"] for c in report["clusters"].values()) == 3


def test_wrong_layout_is_a_clear_error(tmp_path: Path) -> None:
    for name in ("ffpp", "celebdf", "dfdc"):
        with pytest.raises(DataError, match="does not look like"):
            list(get_adapter(name)(tmp_path, DataParams(adapter=name)))


def test_validation_finds_every_kind_of_problem(tiny_project: Path) -> None:
    raw = tiny_project / "raw"
    (raw / "real" / "zero.png").write_bytes(b"")
    (raw / "real" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (raw / "real" / "truncated.mp4").write_bytes((raw / "real" / "clip00_id000.mp4").read_bytes()[:400])
    copy = sorted((raw / "fake").glob("*.png"))[0]
    (raw / "fake" / "copy_x_9.png").write_bytes(copy.read_bytes())
    outside = tiny_project / "outside.png"
    outside.write_bytes(copy.read_bytes())
    (raw / "real" / "escape.png").symlink_to(outside)
    result = validate(raw, DataParams())
    reasons = {b["path"]: b["reason"] for b in result.bad}
    assert reasons["real/zero.png"] == "zero-byte file"
    assert "corrupt" in reasons["real/corrupt.png"]
    assert "video" in reasons["real/truncated.mp4"]
    assert "escapes" in reasons["real/escape.png"]
    assert any("duplicate content" in r for p, r in reasons.items() if "copy_x_9" in p or copy.name in p)
    assert result.errors and result.duplicates


def test_validate_dataset_cli(ffpp_sample: Path, tiny_project: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ok = subprocess.run(["dfd", "validate-dataset", str(ffpp_sample), "--adapter", "ffpp", "--report",
                         str(tmp_path / "ok.json")], cwd=PROJECT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "7 of 7: 3 real, 4 fake" in ok.stdout
    assert json.loads((tmp_path / "ok.json").read_text())["methods"]["Deepfakes"] == 1
    (tiny_project / "raw" / "fake" / "zero_x_1.png").write_bytes(b"")
    bad = subprocess.run(["dfd", "validate-dataset", str(tiny_project / "raw"), "--report", str(tmp_path / "b.json")],
                         cwd=PROJECT, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "fake/zero_x_1.png: zero-byte file" in bad.stdout
