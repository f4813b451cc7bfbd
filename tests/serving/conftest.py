"""A registered ensemble (real MLflow sqlite store) shared by the serving tests, and sample media."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfd.platform.config import Params
from tests.helpers import tiny_params, write_clip


@dataclass
class Registered:
    """A project with a registered, promoted ensemble."""

    root: Path
    params: Params
    tracking_uri: str
    uri: str  # models:/name@alias
    version: str


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory, trained_project: Path) -> Registered:
    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks import register

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("registered") / "project"
    shutil.copytree(trained_project, root)
    params = tiny_params(root, mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"})
    tracker = Tracker.from_params(params, root)
    res = register.run(params, Layout.from_params(params, root), tracker)
    assert res.promoted
    yield Registered(root, params, tracker.tracking_uri, f"models:/{res.model_name}@{res.alias}", res.version)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def loaded(registered: Registered):
    from dfd.serving.registry_model import load

    return load(registered.uri, registered.tracking_uri)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> dict[str, Path]:
    """A face image, a real and a fake clip, a no-face image, a text file, and a truncated clip."""
    d = tmp_path_factory.mktemp("media")
    image = next(p for p in sorted((tiny_dataset).rglob("*.png")) if "real" in p.parts)
    shutil.copy(image, d / "face.png")
    write_clip(d / "real.mp4", seed=1, frames=8, size=160)
    write_clip(d / "fake.mp4", seed=2, fake=True, frames=8, size=160)
    cv2.imwrite(str(d / "noface.png"), np.full((96, 96, 3), 127, np.uint8))
    (d / "notes.txt").write_text("not a picture\n")
    data = (d / "real.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return {p.stem: p for p in d.iterdir()}
