"""The demo dataset: deterministic, in the folder layout, with faces the default detector finds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2

from dfd.data.demo_data import generate
from dfd.data.face_detect import create_detector


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    kw = {"identities": 3, "images_per_identity": 1, "videos": 2, "frames_per_video": 3, "image_size": 128}
    generate(tmp_path / "a", seed=5, **kw)
    generate(tmp_path / "b", seed=5, **kw)
    generate(tmp_path / "c", seed=6, **kw)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a.keys() != c.keys() or a != c
    assert any(k.endswith(".mp4") for k in a) and "metadata.json" in a


def test_layout_and_metadata(tiny_dataset: Path) -> None:
    meta = json.loads((tiny_dataset / "metadata.json").read_text())
    for rel, info in meta.items():
        assert (tiny_dataset / rel).is_file()
        assert info["label"] == (1 if rel.startswith("fake/") else 0)
        if info["label"] == 1:
            assert info["source"] != info["identity"]  # a fake carries another person's face
    assert any(r.startswith("real/") for r in meta) and any(r.startswith("fake/") for r in meta)


def test_default_detector_finds_the_faces(tiny_dataset: Path) -> None:
    detector = create_detector("dlib_hog", upsample=1)
    images = sorted(tiny_dataset.rglob("*.png"))
    found = sum(bool(detector(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))) for p in images)
    assert found / len(images) >= 0.9


def test_fakes_differ_from_reals_inside_the_face(tmp_path: Path) -> None:
    # A fake is its target's real face with another face blended in: the centre changes, the corners do not.
    import numpy as np

    from dfd.data.demo_data import Pose, blend_fake, draw_face, make_identity

    rng = np.random.default_rng(0)
    a, b = make_identity(rng, "a"), make_identity(rng, "b")
    real = draw_face(a, Pose(), 192, noise_seed=1).astype(float)
    fake = blend_fake(a, b, Pose(), 192, np.random.default_rng(1), noise_seed=1).astype(float)
    centre = np.abs(real[80:120, 80:120] - fake[80:120, 80:120]).mean()
    corner = np.abs(real[:20, :20] - fake[:20, :20]).mean()
    assert centre > 5 * max(corner, 0.5)


def test_blend_mask_is_where_the_fake_differs_and_two_faces_are_found(tmp_path: Path) -> None:
    """The paste mask `blend_fake_with_mask` returns is the changed region (the heatmap benchmark's truth), and a
    two-face clip holds a real face and a smaller fake one that the default detector both finds."""
    import numpy as np

    from dfd.data.demo_data import Pose, blend_fake, blend_fake_with_mask, draw_face, make_identity, two_face_clip
    from dfd.data.media import sample_video_frames

    rng = np.random.default_rng(0)
    a, b = make_identity(rng, "a"), make_identity(rng, "b")
    fake, mask = blend_fake_with_mask(a, b, Pose(), 192, np.random.default_rng(1), noise_seed=1)
    assert np.array_equal(fake, blend_fake(a, b, Pose(), 192, np.random.default_rng(1), noise_seed=1))
    real = draw_face(a, Pose(), 192, noise_seed=1).astype(float)
    diff = np.abs(real - fake).mean(axis=2)
    assert mask.shape == (192, 192) and mask.min() >= 0.0 and mask.max() <= 1.0 and 0.1 < mask.mean() < 0.6
    assert diff[mask > 0.9].mean() > 5 * max(diff[mask < 0.01].mean(), 0.5)
    masks = two_face_clip(tmp_path / "two.mp4", seed=1, frames=3, size=160)
    frames, _ = sample_video_frames(tmp_path / "two.mp4", 3)
    assert len(frames) == 3 and masks[0].shape == frames[0][1].shape[:2]
    detector = create_detector("dlib_hog", upsample=1)
    for (_, rgb), m in zip(frames, masks, strict=True):
        boxes = sorted(detector(rgb), key=lambda b: -b.area)
        assert len(boxes) == 2
        # The fake face is the smaller box, and its paste mask lies inside it.
        small = boxes[1]
        ys, xs = np.nonzero(m > 0.5)
        assert small.x0 - 10 <= xs.mean() <= small.x1 + 10 and small.y0 - 10 <= ys.mean() <= small.y1 + 10
