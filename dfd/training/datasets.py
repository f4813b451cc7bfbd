"""The torch Dataset over the faces index, and the per-epoch sample order (balanced, seeded, shardable)."""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dfd.training.face_augment import landmark_cutout, self_blend

log = logging.getLogger(__name__)

#: Augmentations that need the 68 landmarks and run on the crop before the albumentations pipeline.
FACE_OPS = ("sbi", "landmark_cutout")


class FaceCrops(Dataset):
    """Face crops of one split, with their labels.

    An unreadable crop is logged once (its row in `bad`). For training (`substitute_unreadable`) it is replaced by
    the next readable one, so a corrupt file costs one sample, not an epoch. For scoring (val/test) it must not be:
    a neighbour's crop would give the bad row the neighbour's score; the item is then a black placeholder with a NaN
    label, which `tasks.train.predict` turns into a NaN score and the caller excludes and reports. Landmark-based
    augmentations (`face_ops`) are drawn from a generator seeded by
    (seed, epoch, index), so they are the same whether or not a run was resumed, and in any worker.

    Args:
        index: Rows of the faces index (crop, label, landmarks, ...).
        crops_root: Directory the `crop` column is relative to.
        transform: An albumentations pipeline ending in ToTensorV2.
        face_ops: Landmark-based augmentations to apply ("sbi", "landmark_cutout").
        sbi_prob: Chance that a real crop becomes a self-blended fake (label 1).
        cutout_prob: Chance that a crop loses one face part.
        seed: Base seed of the landmark augmentations.
        substitute_unreadable: Replace an unreadable crop by the next readable one (training only, see above).
        sbi_rows: When given, exactly these rows (positions) are self-blended, instead of a `sbi_prob` draw each.
    """

    def __init__(self, index: pd.DataFrame, crops_root: Path, transform: A.Compose, face_ops: list[str] | None = None,
                 sbi_prob: float = 0.5, cutout_prob: float = 0.3, seed: int = 0,
                 substitute_unreadable: bool = True, sbi_rows: set[int] | None = None) -> None:
        self.index = index.reset_index(drop=True)
        self.root = crops_root
        self.transform = transform
        self.paths = [str(crops_root / c) for c in self.index["crop"]]
        self.labels = self.index["label"].to_numpy(dtype=np.float32)
        self.landmarks = (list(self.index["landmarks"]) if "landmarks" in self.index
                          else [None] * len(self.index))
        self.face_ops = list(face_ops or [])
        self.sbi_prob, self.cutout_prob, self.seed, self.epoch = sbi_prob, cutout_prob, seed, 0
        self.bad: set[int] = set()
        self.substitute_unreadable = substitute_unreadable
        self.sbi_rows = sbi_rows

    def set_epoch(self, epoch: int) -> None:
        """Reseed the per-sample augmentations (and albumentations) for `epoch`."""
        self.epoch = epoch
        self.transform.set_random_seed(self.seed + epoch)

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

    def _blends(self, rng: np.random.Generator, label: float, j: int) -> bool:
        """Whether row `j` becomes a self-blended fake (the first draw of its generator)."""
        if "sbi" not in self.face_ops or label != 0 or self.landmarks[j] is None:
            return False
        return j in self.sbi_rows if self.sbi_rows is not None else bool(rng.random() < self.sbi_prob)

    def labels_after_sbi(self) -> np.ndarray:
        """The labels the items of the current epoch carry: 1 for a real crop that SBI blends (same draws)."""
        return np.array([1.0 if self._blends(np.random.default_rng([self.seed, self.epoch, j]), y, j) else y
                         for j, y in enumerate(self.labels)], dtype=np.float32)

    def _face_ops(self, rgb: np.ndarray, label: float, j: int) -> tuple[np.ndarray, float]:
        points = self.landmarks[j]
        if not self.face_ops or points is None:
            return rgb, label
        rng = np.random.default_rng([self.seed, self.epoch, j])
        pts = np.asarray(points, dtype=np.float32).reshape(68, 2)
        if self._blends(rng, label, j):
            rgb, _ = self_blend(rgb, pts, rng)
            label = 1.0
        if "landmark_cutout" in self.face_ops and rng.random() < self.cutout_prob:
            rgb = landmark_cutout(rgb, pts, rng)
        return rgb, label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.substitute_unreadable:
            rgb = self._read(i)
            if rgb is None:  # the shape the model expects, and a NaN label that marks the row as unscored
                blank = self.transform(image=np.zeros((8, 8, 3), dtype=np.uint8))["image"]
                return torch.zeros_like(blank), torch.tensor(float("nan"))
            rgb, label = self._face_ops(rgb, float(self.labels[i]), i)
            return self.transform(image=rgb)["image"], torch.tensor(label, dtype=torch.float32)
        for step in range(len(self)):
            j = (i + step) % len(self)
            rgb = self._read(j)
            if rgb is not None:
                rgb, label = self._face_ops(rgb, float(self.labels[j]), j)
                return self.transform(image=rgb)["image"], torch.tensor(label, dtype=torch.float32)
        raise RuntimeError(f"no readable face crop under {self.root}")


def epoch_order(labels: np.ndarray, seed: int, epoch: int, balanced: bool, rank: int = 0, world: int = 1,
                batch: int = 1) -> list[int]:
    """The sample indices of one epoch, for one rank of `world`, in whole batches.

    Every rank draws the same permutation from (seed, epoch); global batch k is its k-th run of `world * batch`
    indices, and rank r takes the r-th block of `batch` in it. So ranks see disjoint shards, a resumed run sees the
    same order, and N ranks compute exactly what one process computes with N-step gradient accumulation. A last
    partial batch is dropped. `balanced` draws with replacement, each class weighted by the inverse of its
    frequency, so real and fake are seen equally often.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(labels)
    if balanced and len(np.unique(labels)) > 1:
        counts = {c: (labels == c).sum() for c in np.unique(labels)}
        weights = np.array([1.0 / counts[c] for c in labels])
        order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(n)
    span = world * batch
    usable = len(order) - len(order) % span if len(order) >= span else 0  # DDP ranks must take equal steps
    return order[:usable].reshape(-1, world, batch)[:, rank, :].flatten().tolist()
