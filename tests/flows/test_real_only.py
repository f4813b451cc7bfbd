"""A real-only (SBI) member on the tiny trained project: what it reads, what it validates on, how it is fused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dfd.platform.errors import StageError
from dfd.training.augment import build_transform
from dfd.training.datasets import FaceCrops
from dfd.training.real_only import eval_split
from models import model_config
from tasks import ensemble, train
from tests.helpers import tiny_params


def _spec_and_train(root: Path, **recipe: object) -> tuple:
    params = tiny_params(root, models={"sbi": dict(recipe)} if recipe else {})
    return params.models["sbi"], params.train


def test_real_only_training_never_opens_a_fake_crop(trained_project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Every train-split fake crop file is garbage: a whole real-only epoch still trains and reports no bad crop,
    so no fake file was opened, by any path (a loader, a sampler, SBI's partner draw)."""
    faces = tmp_path / "faces"
    shutil.copytree(trained_project / "data" / "faces", faces)
    index = pd.read_parquet(faces / "index.parquet")
    train_fakes = index[(index["split"] == "train") & (index["label"] == 1)]
    assert len(train_fakes) > 10
    for crop in train_fakes["crop"]:
        (faces / crop).write_bytes(b"not an image: a real-only training must never open this file")
    seen: list[tuple[str, float]] = []
    original = FaceCrops.__getitem__

    def spy(self: FaceCrops, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # the labels SBI gave the reals
        x, y = original(self, i)
        if self.substitute_unreadable:  # the training dataset (evaluation sets never substitute)
            seen.append((self.index["sample_id"].iloc[i], float(y)))
        return x, y

    monkeypatch.setattr(FaceCrops, "__getitem__", spy)
    # The whole epoch, not a few steps: every real crop is drawn once.
    params = tiny_params(tmp_path, train={"max_steps_per_epoch": None}, models={"sbi": {"sbi_prob": 0.5}})
    with caplog.at_level("WARNING"):
        res = train.train_model("sbi", params.models["sbi"], params.train, faces / "index.parquet", tmp_path / "sbi",
                                progress=False)
    assert "unreadable" not in caplog.text and res.summary["bad_crops"] == []
    reals = set(index.loc[(index["split"] == "train") & (index["label"] == 0), "sample_id"])
    assert seen and {sid for sid, _ in seen} <= reals  # reals only
    assert {y for _, y in seen} == {0.0, 1.0}  # SBI made positives from reals, and left other reals real
    assert res.summary["train_on"] == "real_only" and res.summary["train_fake_samples"] == 0
    # The tiny validation split has real fakes: the member's validation predictions (for the ensemble) are on them,
    # its epoch was chosen on SBI fakes from the validation reals, and the AUC on the real fakes is reported beside.
    assert res.summary["eval_fakes"]["val"] == "real" and res.summary["selected_on"].startswith("sbi(seed=")
    assert res.summary["val_auc_real_fakes"] == res.summary["val"]["auc"]
    preds = pd.read_parquet(res.predictions)
    val = preds[preds["split"] == "val"].merge(index[["sample_id", "frame", "label"]], on=["sample_id", "frame"])
    assert (val["label_x"] == val["label_y"]).all() and val["label_x"].nunique() == 2


def test_sbi_validation_without_real_fakes_is_fixed_and_reported(trained_project: Path, tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    shutil.copytree(trained_project / "data" / "faces", faces)
    index = pd.read_parquet(faces / "index.parquet")
    no_val_fakes = index[~((index["split"] == "val") & (index["label"] == 1))]
    no_val_fakes.to_parquet(faces / "index.parquet", index=False)

    spec, cfg = _spec_and_train(tmp_path, epochs=2, early_stop_patience=None)
    val_rows = no_val_fakes[no_val_fakes["split"] == "val"]
    tf = build_transform([], train=False, **model_config("efficientnet", spec.input_size).preprocessing())
    ds, rows, source = eval_split(val_rows, faces, tf, cfg.seed, real_only=True)
    assert source.startswith("sbi(seed=") and set(rows["label"]) == {0, 1}
    first = [ds[i] for i in range(len(ds))]
    second = [ds[i] for i in range(len(ds))]  # a later epoch reads the same dataset again
    for (x1, y1), (x2, y2), label in zip(first, second, rows["label"], strict=True):
        assert torch.equal(x1, x2) and float(y1) == float(y2) == float(label)

    res = train.train_model("sbi", spec, cfg, faces / "index.parquet", tmp_path / "sbi", progress=False)
    assert res.summary["eval_fakes"]["val"] == source and res.summary["epochs_run"] == 2
    preds = pd.read_parquet(res.predictions)
    val = preds[preds["split"] == "val"].sort_values(["sample_id", "frame"])
    assert set(val["sample_id"]) <= set(val_rows["sample_id"])  # only real crops, some blended into fakes
    assert np.array_equal(val["label"].to_numpy(),
                          rows.sort_values(["sample_id", "frame"])["label"].to_numpy())
    assert all(np.isfinite(h["val_auc"]) for h in res.summary["history"])  # two classes every epoch


def test_the_epoch_is_chosen_the_same_with_or_without_labelled_validation_fakes(trained_project: Path,
                                                                                 tmp_path: Path) -> None:
    index = pd.read_parquet(trained_project / "data" / "faces" / "index.parquet")
    assert ((index["split"] == "val") & (index["label"] == 1)).any()
    runs = {}
    for name, rows in (("with", index), ("without", index[~((index["split"] == "val") & (index["label"] == 1))])):
        faces = tmp_path / name / "faces"
        shutil.copytree(trained_project / "data" / "faces", faces)
        rows.to_parquet(faces / "index.parquet", index=False)
        # Plateau halving after one stale epoch: the schedule, too, follows the selection AUC.
        params = tiny_params(tmp_path, models={"sbi": {"epochs": 3, "early_stop_patience": None,
                                                       "max_steps_per_epoch": 3, "scheduler": "plateau"}},
                             train={"plateau_patience": 0})
        spec, cfg = params.models["sbi"], params.train
        runs[name] = train.train_model("sbi", spec, cfg, faces / "index.parquet", tmp_path / name / "sbi",
                                       progress=False).summary
    with_fakes, without = runs["with"], runs["without"]
    assert with_fakes["selected_on"] == without["selected_on"] == without["eval_fakes"]["val"]
    curve = [h["val_auc"] for h in with_fakes["history"]]
    # The same selection curve (chosen on the validation fakes, as before, it would be their AUC in one run only).
    assert curve == [h["val_auc"] for h in without["history"]]
    assert with_fakes["best_epoch"] == without["best_epoch"]
    assert [h["lr"] for h in with_fakes["history"]] == [h["lr"] for h in without["history"]]
    assert "val_auc_real_fakes" in with_fakes and "val_auc_real_fakes" not in without


def test_members_with_different_validation_fakes_are_not_fused(tmp_path: Path) -> None:
    keys = {"sample_id": ["a", "b"], "frame": [0, 0], "split": ["val", "val"]}
    pd.DataFrame({**keys, "label": [0, 1], "prob": [0.2, 0.8]}).to_parquet(tmp_path / "one.parquet")
    pd.DataFrame({**keys, "label": [0, 0], "prob": [0.3, 0.6]}).to_parquet(tmp_path / "two.parquet")
    with pytest.raises(StageError, match="members 'one' and 'two' label sample b"):
        ensemble.load_predictions({"one": tmp_path / "one.parquet", "two": tmp_path / "two.parquet"})
