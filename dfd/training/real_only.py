"""Real-only training (`models.<key>.train_on: real_only`): which rows train, and SBI-made evaluation fakes.

A real-only model never sees a labelled fake: its positives are Self-Blended Images made on the fly from real crops
(`dfd/training/face_augment.py`). Validation uses the split's real fakes when it has any; without them, SBI fakes
made from the split's reals with a fixed seed, so the images (and the best-epoch choice) are the same every epoch
and for every real-only member.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd

from dfd.platform.errors import StageError
from dfd.training.datasets import FaceCrops

#: Offset of the seed of SBI-made evaluation fakes from `train.seed`: never the draws of a training epoch.
EVAL_SBI_SEED_OFFSET = 7919
#: The paper blends half of the reals: half the evaluation samples become fakes.
EVAL_SBI_PROB = 0.5


def real_training_rows(train: pd.DataFrame, index: pd.DataFrame, name: str) -> pd.DataFrame:
    """The real rows of the training split, checked by sample id against every fake in the faces index.

    Raises:
        StageError: A fake sample id is among the rows (a label disagreeing with the index), or no real crop has
            landmarks (SBI could make no positive).
    """
    rows = train[train["label"] == 0]
    fake_ids = set(index.loc[index["label"] == 1, "sample_id"])
    leaked = sorted(set(rows["sample_id"]) & fake_ids)
    if leaked:  # a sample labelled both ways: refuse rather than train a real-only model on a fake
        raise StageError(f"{name}: train_on real_only, but fake sample ids {leaked[:3]} are among its real rows",
                         "fix the labels of those samples (ingest report)")
    if rows.empty:
        raise StageError(f"{name}: train_on real_only, but the training split has no real crop",
                         "add real samples, or train_on: all")
    if "landmarks" not in rows or rows["landmarks"].isna().all():
        raise StageError(f"{name}: train_on real_only needs face landmarks for SBI; the faces index has none",
                         "set faces.landmarks: true and rerun the faces stage")
    return rows


def eval_split(rows: pd.DataFrame, root: Path, transform: A.Compose, seed: int,
               real_only: bool) -> tuple[FaceCrops, pd.DataFrame, str]:
    """The dataset of one evaluation split, its rows with the labels its items carry, and what its fakes are.

    Returns:
        (dataset, rows, source): source is `real` (the split's own fakes, or no SBI for this model) or
        `sbi(seed=N)` when a real-only model's split has no real fake and SBI made them from its reals.
    """
    if not real_only or (rows["label"] == 1).any():
        return FaceCrops(rows, root, transform, substitute_unreadable=False), rows, "real"
    eval_seed = seed + EVAL_SBI_SEED_OFFSET
    # Half of the samples (whole videos, not single frames: a video has one label), drawn once with a fixed seed, so
    # that the split always holds both classes; every frame of a chosen sample is blended.
    rows = rows.reset_index(drop=True)
    samples = sorted(rows.loc[rows["landmarks"].notna(), "sample_id"].unique()) if "landmarks" in rows else []
    if not samples:
        raise StageError("a real-only model's evaluation split has no real fake and no landmarks to make SBI fakes",
                         "set faces.landmarks: true and rerun the faces stage, or add fake samples")
    n = min(max(1, round(len(samples) * EVAL_SBI_PROB)), max(1, len(samples) - 1))
    chosen = set(np.random.default_rng(eval_seed).permutation(samples)[:n])
    blend = {i for i, sid in enumerate(rows["sample_id"]) if sid in chosen}
    ds = FaceCrops(rows, root, transform, ["sbi"], EVAL_SBI_PROB, 0.0, eval_seed, substitute_unreadable=False,
                   sbi_rows=blend)
    # Never `set_epoch` on this dataset: its generators stay at epoch 0, so every pass yields the same images.
    return ds, rows.assign(label=ds.labels_after_sbi().astype(rows["label"].dtype)), f"sbi(seed={eval_seed})"
