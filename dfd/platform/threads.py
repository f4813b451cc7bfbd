"""How many CPU threads each training uses: `train.torch_threads` as a number, torch's default, or `auto`.

`auto` means this machine's cores divided by the trainings running at once. Only the process that starts the
trainings knows how many run together (`dfd run`: up to `runner.max_workers` models at once; `dvc repro` and
`dfd stage train`: one), so that parent computes the share and passes it to each training process in
`$DFD_TORCH_THREADS`; a training started without it (DVC, a shell) is the only one and takes every core (shared
by the ranks when torchrun starts several on this machine).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

THREADS_ENV = "DFD_TORCH_THREADS"  # set by the parent of concurrent trainings to each one's share of the cores


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, as a container's CPU set limits it), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def threads_each(at_once: int, cores: int | None = None) -> int:
    """Each training's share of the cores when `at_once` train together (at least one thread)."""
    return max((cores or available_cores()) // max(at_once, 1), 1)


def torch_threads(setting: int | str | None, env: Mapping[str, str] | None = None) -> int | None:
    """The thread count a training sets (`torch.set_num_threads`); None leaves torch's default.

    Args:
        setting: `train.torch_threads`: a number, `auto`, or None.
        env: Where the parent's share is read (`$DFD_TORCH_THREADS`); the process environment by default.
    """
    if setting != "auto":
        return int(setting) if setting is not None else None
    env = os.environ if env is None else env
    share = env.get(THREADS_ENV, "")
    if share.isdigit() and int(share) > 0:
        return int(share)
    # No parent's share: the only training here, unless torchrun started one rank per device on this machine.
    ranks = env.get("LOCAL_WORLD_SIZE", "")
    return threads_each(int(ranks) if ranks.isdigit() else 1)
