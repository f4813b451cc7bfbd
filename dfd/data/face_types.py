"""What every face detector shares: the box it returns and the base class it implements.

Each detector family (dlib's in `face_detect`, MTCNN in `mtcnn`) imports these from here, and `face_detect`'s
registry imports the families: arrows point one way, no family imports the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the image it was found in."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0)

    def scaled(self, factor: float) -> Box:
        """The same box in an image `factor` times larger."""
        return Box(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score)


class Detector:
    """Base of the detectors: `__call__(rgb)` returns boxes in that image's pixel coordinates."""

    def __init__(self, upsample: int = 1) -> None:
        self.upsample = upsample

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        raise NotImplementedError

    def batch(self, images: list[np.ndarray]) -> list[list[Box]]:
        """Boxes of each image; families that batch over frames override it (dlib's detectors take one)."""
        return [self(im) for im in images]
