"""Training in a child process: same bits as in-process, even with models training side by side; clear errors."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from dfd.platform.errors import StageError
from dfd.platform.layout import Layout
from flows.train_process import train_in_process
from models.checkpoint import load_checkpoint
from tasks import train
from tests.helpers import tiny_params

pytestmark = pytest.mark.slow


def test_side_by_side_children_match_a_solo_in_process_run(tiny_project: Path, trained_project: Path) -> None:
    root = tiny_project
    # ingest and faces on the tiny dataset: the session's trained project already ran them, with the same params.
    shutil.copytree(trained_project / "data", root / "data")
    # Two epochs, so dropout, augmentation and the data order all draw random numbers across epochs. torch_threads
    # auto: the parent gives each child its share (1 thread here), the one thread the solo run below uses.
    params = tiny_params(root, train={"epochs": 2, "max_steps_per_epoch": 4, "batch_size": 4, "torch_threads": "auto"})
    layout = Layout.from_params(params, root)
    seen: dict[str, list[tuple[int, dict[str, float]]]] = {"f3net": [], "mesonet": []}

    def child(name: str) -> train.TrainResult:
        return train_in_process(params, layout, name, lambda e, m: seen[name].append((e, m)), threads=1)

    with ThreadPoolExecutor(2) as pool:  # what the flow does: two models at once
        results = dict(zip(seen, pool.map(child, seen), strict=True))

    solo = train.train_model("f3net", params.models["f3net"], params.train.model_copy(update={"torch_threads": 1}),
                             layout.faces_index, root / "solo" / "f3net", progress=False)
    ours, ref = load_checkpoint(results["f3net"].best)["state_dict"], load_checkpoint(solo.best)["state_dict"]
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ours)

    # Every epoch reached the parent as it ended, with the metrics the child's summary records.
    for name, res in results.items():
        assert [e for e, _ in seen[name]] == [0, 1]
        assert [m["val_auc"] for _, m in seen[name]] == [h["val_auc"] for h in res.summary["history"]]
        assert res.predictions.is_file() and res.summary["epochs_run"] == 2
        assert res.summary["torch_threads"] == 1 and res.summary["recipe"]["torch_threads"] == "auto"


def test_child_errors_are_one_clear_stage_error(tiny_project: Path) -> None:
    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    with pytest.raises(StageError, match=r"train@mesonet: faces index not found.*dfd stage faces"):
        train_in_process(params, layout, "mesonet")  # nothing extracted yet
    with pytest.raises(StageError, match="not under `models:`"):
        train_in_process(params, layout, "resnet")
