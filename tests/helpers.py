"""Helpers shared by tests: paths, the tiny params, clips, waiting for a server."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from dfd.platform.config import Params, load_params

PROJECT = Path(__file__).resolve().parent.parent
TINY = PROJECT / "tests" / "params.tiny.yaml"
SHARED_DATA = PROJECT.parent / "shared" / "data"


def tiny_params(root: Path, **sections: dict) -> Params:
    """params.yaml + tests/params.tiny.yaml, with the dataset under `root` and optional extra overrides."""
    extra = root / "extra.yaml"
    data = {"data": {"root": str(root / "raw")}, **sections}
    extra.write_text(yaml.safe_dump(data))
    return load_params(PROJECT / "params.yaml", [TINY, extra])


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 120.0, what: str = "server") -> None:
    """Poll `url` until it answers 200; raise when `proc` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before answering {url}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s")
        time.sleep(0.5)


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Poll `cond` until it holds; fail naming `what` when `timeout_s` passes first (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)


def write_clip(path: Path, seed: int, fake: bool = False, frames: int = 6, size: int = 128) -> Path:
    """A short drawn-face .mp4 (a blended fake when `fake`), for dataset-layout fixtures."""
    import numpy as np

    from dfd.data.demo_data import Pose, blend_fake, draw_face, make_identity, write_video

    rng = np.random.default_rng(seed)
    target, source = make_identity(rng, "t"), make_identity(rng, "s")
    images = [blend_fake(target, source, Pose(dx=0.005 * i), size, rng, i) if fake
              else draw_face(target, Pose(dx=0.005 * i), size, i) for i in range(frames)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, images)
    return path
