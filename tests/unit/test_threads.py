"""`train.torch_threads`: a number, torch's default, or `auto` (the cores divided by the trainings at once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfd.platform.config import load_params
from dfd.platform.errors import ConfigError
from dfd.platform.threads import THREADS_ENV, available_cores, threads_each, torch_threads
from flows.runners import trainings_at_once
from tests.helpers import PROJECT, tiny_params


def test_auto_is_the_parents_share_or_every_core() -> None:
    assert torch_threads(None, {}) is None and torch_threads(3, {THREADS_ENV: "2"}) == 3  # a number is a number
    assert torch_threads("auto", {THREADS_ENV: "2"}) == 2  # the share the parent computed
    assert torch_threads("auto", {}) == available_cores()  # no parent (dvc repro): the only training
    assert torch_threads("auto", {THREADS_ENV: "0"}) == available_cores()  # not a share: ignored
    assert torch_threads("auto", {"LOCAL_WORLD_SIZE": str(available_cores())}) == 1  # torchrun ranks share them
    assert [threads_each(n, cores=2) for n in (1, 2, 4)] == [2, 1, 1]  # never below one thread
    assert threads_each(4, cores=16) == 4


def test_the_demo_gives_dvc_every_core_and_dfd_run_one_each(tmp_path: Path) -> None:
    demo = load_params(PROJECT / "params.yaml", [PROJECT / "configs" / "demo.yaml"])
    assert demo.train.torch_threads == "auto"
    assert trainings_at_once(demo) == 4  # runner.max_workers: 4 of the five members at once
    assert threads_each(trainings_at_once(demo), cores=2) == 1  # `dfd run` on two cores: one thread each
    assert torch_threads(demo.train.torch_threads, {}) == available_cores()  # `dvc repro`: one at a time
    dask = tiny_params(tmp_path, runner={"kind": "dask", "dask_workers": 2})
    assert trainings_at_once(dask) == 2
    assert trainings_at_once(tiny_params(tmp_path, runner={"kind": "dask", "address": "tcp://h:8786"})) is None


@pytest.mark.parametrize("bad", ["many", 0, -1])
def test_a_bad_thread_count_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="torch_threads"):
        tiny_params(tmp_path, train={"torch_threads": bad})
