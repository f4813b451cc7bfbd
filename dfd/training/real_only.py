"""Real-only training (`models.<key>.train_on: real_only`): which rows train, and SBI-made evaluation fakes.

A real-only model never sees a labelled fake: its positives are Self-Blended Images made on the fly from real crops
(`dfd/training/face_augment.py`). Nor is it *selected* by one: its best epoch, early stopping and plateau schedule
follow the AUC on SBI fakes made from the validation split's reals with a fixed seed (`selection_split`; SBI's own
recipe), so the images and the choice are the same every epoch, for every real-only member, and whether or not the
split holds labelled fakes. Its predictions on the validation split as it is (`eval_split`: the split's real fakes
when it has any, else the same SBI-made ones) go to the ensemble, whose fusion is fitted there; the AUC on those real
fakes is reported beside the selection AUC (`val_auc_real_fakes`), never used to choose.
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


def sbi_split(rows: pd.DataFrame, root: Path, transform: A.Compose, seed: int) -> tuple[FaceCrops, pd.DataFrame, str]:
    """SBI fakes made from the reals of `rows` with a fixed seed: (dataset, its rows with their labels, source).

    Half of the samples (whole videos, not single frames: a video has one label), drawn once with a fixed seed, so
    that the split always holds both classes; every frame of a chosen sample is blended.
    """
    eval_seed = seed + EVAL_SBI_SEED_OFFSET
    rows = rows[rows["label"] == 0].reset_index(drop=True)
    samples = sorted(rows.loc[rows["landmarks"].notna(), "sample_id"].unique()) if "landmarks" in rows else []
    if not samples:
        raise StageError("a real-only model's validation needs SBI fakes, and the split has no real crop with "
                         "landmarks to make them from", "set faces.landmarks: true and rerun the faces stage, or "
                         "add real samples to the split")
    n = min(max(1, round(len(samples) * EVAL_SBI_PROB)), max(1, len(samples) - 1))
    chosen = set(np.random.default_rng(eval_seed).permutation(samples)[:n])
    blend = {i for i, sid in enumerate(rows["sample_id"]) if sid in chosen}
    ds = FaceCrops(rows, root, transform, ["sbi"], EVAL_SBI_PROB, 0.0, eval_seed, substitute_unreadable=False,
                   sbi_rows=blend)
    # Never `set_epoch` on this dataset: its generators stay at epoch 0, so every pass yields the same images.
    return ds, rows.assign(label=ds.labels_after_sbi().astype(rows["label"].dtype)), f"sbi(seed={eval_seed})"


def eval_split(rows: pd.DataFrame, root: Path, transform: A.Compose, seed: int,
               real_only: bool) -> tuple[FaceCrops, pd.DataFrame, str]:
    """The dataset of one evaluation split (what the member predicts for the ensemble and the test), its rows with
    the labels its items carry, and what its fakes are.

    Returns:
        (dataset, rows, source): source is `real` (the split's own fakes, or no SBI for this model) or
        `sbi(seed=N)` when a real-only model's split has no real fake and SBI made them from its reals.
    """
    if not real_only or (rows["label"] == 1).any():
        return FaceCrops(rows, root, transform, substitute_unreadable=False), rows, "real"
    return sbi_split(rows, root, transform, seed)


def selection_split(rows: pd.DataFrame, root: Path, transform: A.Compose, seed: int
                    ) -> tuple[FaceCrops, pd.DataFrame, str]:
    """What a real-only model's epoch is chosen on: SBI fakes from the validation reals only (see the module doc)."""
    return sbi_split(rows, root, transform, seed)
