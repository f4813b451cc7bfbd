"""The torch Dataset over the faces index: one item per face crop."""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


class FaceCrops(Dataset):
    """Face crops of one split, with their labels.

    An unreadable crop is replaced by the next readable one and logged once, so a corrupt file on disk costs one
    sample, not an epoch.

    Args:
        index: Rows of the faces index (crop, label, ...).
        crops_root: Directory the `crop` column is relative to.
        transform: An albumentations pipeline ending in ToTensorV2.
    """

    def __init__(self, index: pd.DataFrame, crops_root: Path, transform: A.Compose) -> None:
        self.index = index.reset_index(drop=True)
        self.root = crops_root
        self.transform = transform
        self.paths = [str(crops_root / c) for c in self.index["crop"]]
        self.labels = self.index["label"].to_numpy(dtype=np.float32)
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, i: int) -> np.ndarray | None:
        bgr = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        if bgr is None:
            if i not in self.bad:
                log.warning("skipping unreadable face crop %s", self.paths[i])
                self.bad.add(i)
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        for step in range(len(self)):
            j = (i + step) % len(self)
            rgb = self._read(j)
            if rgb is not None:
                return self.transform(image=rgb)["image"], torch.tensor(self.labels[j])
        raise RuntimeError(f"no readable face crop under {self.root}")
