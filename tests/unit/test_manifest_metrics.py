"""Identity-disjoint, stable splits; metrics (the gate decision: tests/unit/test_gate.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfd.data.manifest import assign_splits, sample_id
from dfd.evaluation.metrics import binary_metrics, eer, frame_and_video_metrics


def test_splits_are_stable_when_identities_are_added() -> None:
    before = assign_splits([f"id{i}" for i in range(200)], 0.15, 0.15, seed=1)
    after = assign_splits([f"id{i}" for i in range(230)], 0.15, 0.15, seed=1)
    assert all(after[i] == s for i, s in before.items())
    shares = pd.Series(after).value_counts(normalize=True)
    assert 0.08 < shares["test"] < 0.22 and 0.08 < shares["val"] < 0.22


def test_small_sets_still_fill_every_split() -> None:
    split = assign_splits(["a", "b", "c", "d"], 0.2, 0.2, seed=0)
    assert set(split.values()) == {"train", "val", "test"}


def test_seed_changes_splits() -> None:
    ids = [f"id{i}" for i in range(100)]
    assert assign_splits(ids, 0.2, 0.2, 0) != assign_splits(ids, 0.2, 0.2, 1)


def test_sample_id_is_stable_and_distinct() -> None:
    assert sample_id("d", "real/a.png") == sample_id("d", "real/a.png") != sample_id("d", "real/b.png")


def test_binary_metrics_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    perfect = binary_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect["auc"] == 1.0 and perfect["eer"] == 0.0 and perfect["accuracy"] == 1.0
    inverted = binary_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]))
    assert inverted["auc"] == 0.0 and inverted["accuracy"] == 0.0
    assert inverted["log_loss"] > perfect["log_loss"]


def test_eer_threshold_separates() -> None:
    y = np.array([0] * 50 + [1] * 50)
    scores = np.concatenate([np.linspace(0, 0.4, 50), np.linspace(0.6, 1, 50)])
    rate, thr = eer(y, scores)
    assert rate == 0.0 and 0.4 <= thr <= 0.6


def test_one_class_gives_nan_not_an_exception() -> None:
    m = binary_metrics(np.array([1, 1]), np.array([0.3, 0.9]))
    assert np.isnan(m["auc"]) and m["accuracy"] == 0.5


def test_video_level_averages_frames() -> None:
    frames = pd.DataFrame({"sample_id": ["a", "a", "b", "b"], "label": [0, 0, 1, 1], "prob": [0.9, 0.1, 0.6, 0.6]})
    m = frame_and_video_metrics(frames, 0.5)
    assert m["video_n"] == 2 and m["video_auc"] == 1.0 and m["auc"] < 1.0
