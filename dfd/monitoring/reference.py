"""A model's reference: the statistics of what it learnt from, stored with the registered version.

Monitoring compares served traffic with this, like with like: one row per training sample (a served file is one
sample), holding the mean image statistics of its face crops (`dfd.evaluation.drift.image_stats`, the drift
report's columns), and one row per held-out sample (validation and test) holding the ensemble's P(fake) aggregated
over its crops as the served model aggregates a file. Training samples' own scores would be over-confident, so the
P(fake) reference is the held-out one. `reference.json` adds the no-face rate of the training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfd.evaluation.aggregate import aggregate
from dfd.evaluation.crops import read_crop
from dfd.evaluation.drift import STAT_COLUMNS, image_stats
from dfd.platform.config import AggregationParams
from dfd.platform.files import read_json, write_json, write_parquet

REFERENCE_FILES = ("reference.parquet", "reference.json")
REFERENCE_ARTIFACT_DIR = "monitoring"  # where the files sit in the version's run (tag `monitoring_reference`)


def image_reference(index: pd.DataFrame, crops_root: Path, max_samples: int, seed: int = 0) -> pd.DataFrame:
    """Per training sample: the mean statistics of its crops (a seeded sample of at most `max_samples` samples)."""
    train = index[index["split"] == "train"]
    ids = train["sample_id"].drop_duplicates()
    if len(ids) > max_samples:
        ids = ids.sample(max_samples, random_state=seed)
    rows = []
    for sid, group in train[train["sample_id"].isin(set(ids))].groupby("sample_id", sort=True):
        crops = np.stack([read_crop(crops_root / c) for c in group["crop"]])
        rows.append({"sample_id": sid, "role": "image", **image_stats(crops).mean().to_dict()})
    return pd.DataFrame(rows, columns=["sample_id", "role", *STAT_COLUMNS])


def score_reference(predictions: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """Per held-out sample: the ensemble's P(fake) over its crops, aggregated as the served model does."""
    agg = AggregationParams(**spec.get("aggregation", {}))
    held = predictions[predictions["split"].isin(["val", "test"])]
    rows = [{"sample_id": sid, "role": "score", "p_fake": aggregate(g["prob"].to_numpy(), agg)}
            for sid, g in held.groupby("sample_id", sort=True)]
    return pd.DataFrame(rows, columns=["sample_id", "role", "p_fake"])


def build_reference(faces_index: Path, ensemble_dir: Path, out_dir: Path, max_samples: int,
                    seed: int = 0) -> list[Path]:
    """Write `reference.parquet` and `reference.json` into `out_dir`; returns their paths."""
    index = pd.read_parquet(faces_index)
    images = image_reference(index, faces_index.parent, max_samples, seed)
    scores = score_reference(pd.read_parquet(ensemble_dir / "predictions.parquet"),
                             read_json(ensemble_dir / "ensemble.json"))
    faces_report = faces_index.parent / "faces_report.json"
    samples = read_json(faces_report).get("samples") if faces_report.is_file() else None
    with_face = int(index["sample_id"].nunique())
    meta = {"image_samples": len(images), "score_samples": len(scores), "columns": STAT_COLUMNS,
            # Samples of the dataset where the faces stage found no face: served files are judged against this.
            "no_face_rate": (1 - with_face / samples) if samples else 0.0,
            "p_fake_source": "ensemble predictions on validation and test, aggregated per sample"}
    table = pd.concat([images, scores], ignore_index=True)[["sample_id", "role", *STAT_COLUMNS, "p_fake"]]
    return [write_parquet(table, out_dir / REFERENCE_FILES[0]), write_json(out_dir / REFERENCE_FILES[1], meta)]


def load_reference(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(image rows, score rows, meta) of a reference written by `build_reference`."""
    table = pd.read_parquet(folder / REFERENCE_FILES[0])
    return (table[table["role"] == "image"][STAT_COLUMNS].reset_index(drop=True),
            table[table["role"] == "score"][["p_fake"]].reset_index(drop=True), read_json(folder / REFERENCE_FILES[1]))
