"""ingest and faces on tiny generated data, including bad inputs that must be reported, not crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dfd.platform.errors import DataError, StageError
from dfd.platform.layout import Layout
from tasks import faces, ingest
from tests.helpers import tiny_params


def test_ingest_builds_identity_disjoint_manifest(tiny_project: Path) -> None:
    params = tiny_params(tiny_project)
    res = ingest.run(params, Layout.from_params(params, tiny_project))
    df = pd.read_parquet(res.manifest)
    assert list(df.columns) == ["sample_id", "dataset", "path", "media", "label", "method", "identity", "persons",
                                "split"]
    assert res.bad == 0 and len(df) == res.samples
    assert set(df["split"]) == {"train", "val", "test"}
    assert (df.groupby("identity")["split"].nunique() == 1).all()  # no identity cluster straddles splits
    # ... nor any person: a fake's source lands in its target's split (the old split hashed the target alone)
    split_of_person: dict[str, set[str]] = {}
    for persons, split in zip(df["persons"], df["split"], strict=True):
        for p in persons:
            split_of_person.setdefault(p, set()).add(split)
    assert all(len(s) == 1 for s in split_of_person.values())
    fakes = df[df["label"] == 1]
    assert (fakes["persons"].map(len) == 2).all()  # the demo's fakes name their target and their source
    report = json.loads(res.report.read_text())
    assert report["clusters_total"] == df["identity"].nunique() and report["clusters"]["test"]["all"] >= 1
    assert set(df["media"]) == {"image", "video"}
    assert df["sample_id"].is_unique


def test_bad_inputs_are_reported_with_reasons(tiny_project: Path) -> None:
    raw = tiny_project / "raw"
    (raw / "real" / "empty.png").write_bytes(b"")
    (raw / "fake" / "broken_x_0.png").write_bytes(b"\x89PNG not really")
    (raw / "real" / "clip_bad.mp4").write_bytes(b"\x00" * 2048)
    meta = json.loads((raw / "metadata.json").read_text())
    meta["fake/missing_y_0.png"] = {"label": 1, "identity": "id999"}
    (raw / "metadata.json").write_text(json.dumps(meta))
    params = tiny_params(tiny_project)
    res = ingest.run(params, Layout.from_params(params, tiny_project))
    reasons = {b["path"]: b["reason"] for b in json.loads(res.report.read_text())["bad"]}
    assert reasons["real/empty.png"] == "zero-byte file"
    assert "corrupt" in reasons["fake/broken_x_0.png"]
    assert "video" in reasons["real/clip_bad.mp4"]
    assert "missing" in reasons["fake/missing_y_0.png"]
    manifest = pd.read_parquet(res.manifest)
    assert not set(reasons) & set(manifest["path"])  # bad rows never reach the manifest


def test_too_many_bad_inputs_stop_with_the_report_written(tiny_project: Path) -> None:
    for p in list((tiny_project / "raw" / "real").glob("*.png"))[:8]:
        p.write_bytes(b"")
    params = tiny_params(tiny_project, ingest={"max_bad_share": 0.05})
    layout = Layout.from_params(params, tiny_project)
    with pytest.raises(DataError, match="max_bad_share"):
        ingest.run(params, layout)
    assert len(json.loads(layout.ingest_report.read_text())["bad"]) == 8


def test_missing_root_and_empty_class(tiny_project: Path) -> None:
    params = tiny_params(tiny_project, data={"root": str(tiny_project / "nowhere")})
    with pytest.raises(DataError, match="dataset root not found"):
        ingest.run(params, Layout.from_params(params, tiny_project))
    for p in (tiny_project / "raw" / "fake").iterdir():
        p.unlink()
    params = tiny_params(tiny_project)
    # metadata.json still names the deleted fakes: each is a missing file, and half the dataset missing stops ingest
    with pytest.raises(DataError, match=r"unusable.*max_bad_share"):
        ingest.run(params, Layout.from_params(params, tiny_project))
    (tiny_project / "raw" / "metadata.json").unlink()
    # an empty fake/ is a dataset of reals only: refused unless every model trains real_only, and the error says so
    with pytest.raises(DataError, match=r"only 0 usable fake samples") as err:
        ingest.run(params, Layout.from_params(params, tiny_project))
    assert "real_only" in err.value.hint


def test_faces_extracts_then_skips_on_rerun(tiny_project: Path) -> None:
    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    with pytest.raises(StageError, match="ingest"):
        faces.run(params, layout)  # no manifest yet: a clear error naming the missing stage
    ingest.run(params, layout)
    first = faces.run(params, layout)
    index = pd.read_parquet(first.index)
    assert first.crops == len(index) > 0 and first.skipped == 0
    report = json.loads(first.report.read_text())
    assert report["face_share"] >= 0.9
    crop = layout.faces_index.parent / index["crop"].iloc[0]
    import cv2

    assert cv2.imread(str(crop)).shape == (params.faces.crop_size, params.faces.crop_size, 3)
    assert len(index["landmarks"].iloc[0]) == 136
    videos = index[index["media"] == "video"]
    assert videos.groupby("sample_id")["frame"].nunique().max() == params.faces.frames_per_video
    second = faces.run(params, layout)
    assert second.extracted == 0 and second.skipped == first.extracted + first.skipped
    assert second.crops == first.crops


def test_faces_parallel_workers_match_serial(tiny_project: Path) -> None:
    serial_root = tiny_project / "serial"
    shutil.copytree(tiny_project / "raw", serial_root / "raw")
    results = {}
    for root, workers in ((tiny_project, 2), (serial_root, 1)):
        params = tiny_params(root, faces={"workers": workers})
        layout = Layout.from_params(params, root)
        ingest.run(params, layout)
        res = faces.run(params, layout)
        results[workers] = (res, pd.read_parquet(res.index).drop(columns=["landmarks"]))
    (par, par_index), (ser, ser_index) = results[2], results[1]
    assert par.extracted == ser.extracted > 0 and par.crops == ser.crops > 0
    assert par.samples_without_face == ser.samples_without_face
    pd.testing.assert_frame_equal(par_index, ser_index)  # the same crops, boxes and detectors, in the same order
    for crop in par_index["crop"]:  # and the same pixels
        assert (tiny_project / "data" / "faces" / crop).read_bytes() == (serial_root / "data" / "faces" /
                                                                         crop).read_bytes()


def test_adding_samples_extracts_only_the_new_ones(tiny_project: Path) -> None:
    import cv2
    import numpy as np

    from dfd.data.demo_data import Pose, blend_fake, draw_face, make_identity

    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    ingest.run(params, layout)
    first = faces.run(params, layout)
    rng = np.random.default_rng(99)
    a, b = make_identity(rng, "new1"), make_identity(rng, "new2")
    cv2.imwrite(str(tiny_project / "raw" / "real" / "new1_0.png"), draw_face(a, Pose(), 160, 5))
    cv2.imwrite(str(tiny_project / "raw" / "fake" / "new1_new2_0.png"), blend_fake(a, b, Pose(), 160, rng, 6))
    ingest.run(params, layout)
    second = faces.run(params, layout)
    assert second.extracted == 2 and second.skipped == first.extracted
    assert second.crops == first.crops + 2


def test_the_cnn_detector_finds_a_drawn_face(tiny_dataset: Path) -> None:
    import cv2

    from dfd.data.face_detect import create_detector

    image = sorted((tiny_dataset / "real").glob("*.png"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    boxes = create_detector("dlib_cnn", upsample=0)(rgb)
    assert len(boxes) == 1 and boxes[0].area > 0.1 * rgb.shape[0] * rgb.shape[1]
