"""Augmentations on a real face crop (FF++ when ../shared/data is present, else a generated face)."""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from dfd.data.face_detect import Landmarks, create_detector, square_crop
from dfd.training.augment import AUGMENTATIONS, build_transform, list_augmentations
from dfd.training.batch_augment import mix_batch
from dfd.training.datasets import FaceCrops, epoch_order
from dfd.training.face_augment import PARTS, hull_mask, landmark_cutout, self_blend
from models import model_config
from tests.helpers import SHARED_DATA


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, np.ndarray]:
    """A 128 px RGB face crop and its 68 landmarks in crop pixels."""
    video = SHARED_DATA / "ffpp_c23_sample" / "original_sequences" / "youtube" / "c23" / "videos" / "004.mp4"
    if video.is_file():
        ok, bgr = cv2.VideoCapture(str(video)).read()
        assert ok
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:  # no real data here: a generated face stands in
        from dfd.data.demo_data import Pose, draw_face, make_identity

        rgb = cv2.cvtColor(draw_face(make_identity(np.random.default_rng(0), "x"), Pose(), 256, 0), cv2.COLOR_BGR2RGB)
    box = max(create_detector("dlib_hog")(rgb), key=lambda b: b.area)
    crop, (x0, y0, side) = square_crop(rgb, box, 1.3, 128)
    points = (Landmarks()(rgb, box) - np.array([x0, y0], np.float32)) * (128 / side)
    return crop, points


@pytest.mark.parametrize("name", list_augmentations())
def test_each_augmentation_keeps_shape_and_dtype(name: str, face: tuple[np.ndarray, np.ndarray]) -> None:
    transform = AUGMENTATIONS[name]()
    transform.p = 1.0
    pipeline = A.Compose([transform], strict=True, seed=0)
    out = pipeline(image=face[0])["image"]
    assert out.shape == face[0].shape and out.dtype == np.uint8
    if name != "hflip":  # a flip of a near-symmetric face can be close to identity; everything else must change it
        assert not np.array_equal(out, face[0])


def test_full_pipeline_gives_the_model_input(face: tuple[np.ndarray, np.ndarray]) -> None:
    cfg = model_config("xception", 64)
    out = build_transform(list_augmentations(), train=True, **cfg.preprocessing())(image=face[0])["image"]
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32


def test_sbi_changes_only_inside_its_mask(face: tuple[np.ndarray, np.ndarray]) -> None:
    crop, points = face
    for seed in range(5):
        out, mask = self_blend(crop, points, np.random.default_rng(seed))
        diff = np.abs(out.astype(int) - crop.astype(int)).sum(axis=2)
        assert out.shape == crop.shape and out.dtype == np.uint8
        assert (diff[mask == 0] == 0).all() and (mask == 0).mean() > 0.1  # the margin around the face is untouched
        assert diff[mask >= mask.max() / 2].mean() > 1.0  # the blended region really differs
        hull = hull_mask(crop.shape[:2], points)
        assert mask[hull > 0].mean() > mask[hull == 0].mean()  # the mask sits on the face


def test_landmark_cutout_blanks_a_face_part(face: tuple[np.ndarray, np.ndarray]) -> None:
    crop, points = face
    out = landmark_cutout(crop, points, np.random.default_rng(1))
    blanked = (out.sum(axis=2) == 0) & (crop.sum(axis=2) > 0)
    assert blanked.sum() > 20
    centres = {part: points[idx].mean(axis=0) for part, idx in PARTS.items()}
    ys, xs = np.nonzero(blanked)
    centre = np.array([xs.mean(), ys.mean()])
    assert min(np.linalg.norm(centre - c) for c in centres.values()) < 20


def test_mixup_and_cutmix_soft_labels() -> None:
    x = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)] * 4)
    y = torch.tensor([0.0, 1.0] * 4)
    for name in ("mixup", "cutmix"):
        mx, my = mix_batch(x, y, [name], 1.0, 0.4, torch.Generator().manual_seed(3))
        assert mx.shape == x.shape and ((my >= 0) & (my <= 1)).all()
        # With images all-0 (real) or all-1 (fake), an image's mean is exactly its share of fake content.
        assert torch.allclose(mx.mean(dim=(1, 2, 3)), my, atol=1e-6)


def test_face_ops_in_the_dataset_and_a_corrupt_crop(face: tuple[np.ndarray, np.ndarray], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    crop, points = face
    cv2.imwrite(str(tmp_path / "good.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    index = pd.DataFrame({"crop": ["good.png", "bad.png"], "label": [0, 0],
                          "landmarks": [points.flatten().tolist()] * 2})
    tf = build_transform([], train=False, **model_config("mesonet", 64).preprocessing())
    ds = FaceCrops(index, tmp_path, tf, ["sbi"], sbi_prob=1.0)
    with caplog.at_level(logging.WARNING):
        x, y = ds[1]  # the corrupt crop is replaced by a readable one, with a logged reason
    assert "unreadable face crop" in caplog.text and str(tmp_path / "bad.png") in caplog.text
    assert x.shape == (3, 64, 64) and y.item() == 1.0  # sbi_prob=1: the real crop became a pseudo-fake


def test_balanced_order_and_shards() -> None:
    labels = np.array([0] * 90 + [1] * 10, dtype=np.float32)
    order = epoch_order(labels, seed=0, epoch=0, balanced=True)
    assert 0.35 < labels[order].mean() < 0.65
    assert epoch_order(labels, 0, 1, True) != order and epoch_order(labels, 0, 0, True) == order
    shards = [epoch_order(labels, 0, 0, False, rank=r, world=2, batch=4) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 48
    whole = epoch_order(labels, 0, 0, False, batch=4)
    assert whole[:8] == shards[0][:4] + shards[1][:4]  # global batch 0 = rank 0's block, then rank 1's
