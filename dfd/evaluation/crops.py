"""Face crops read from disk in batches, so that evaluation holds a bounded number of them at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from dfd.platform.errors import StageError


def read_crop(path: Path) -> np.ndarray:
    """One crop as RGB uint8; an unreadable crop is an error (never replaced by another sample's)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise StageError(f"face crop unreadable: {path}", "rerun the faces stage (`dfd stage faces`)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iter_crop_batches(paths: Sequence[Path], labels: Sequence[int], batch_size: int
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(RGB uint8 crops (B, H, W, 3), labels (B,)) for consecutive slices of `paths`.

    Crops of one batch must share a size (the faces stage writes them square at `faces.crop_size`).
    """
    for i in range(0, len(paths), batch_size):
        yield (np.stack([read_crop(p) for p in paths[i:i + batch_size]]),
               np.asarray(labels[i:i + batch_size], dtype=int))
