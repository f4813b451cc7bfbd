"""Where the training tasks run: threads on this machine (default), a Dask cluster, or Ray (`runner:` in params).

The four models are independent tasks. On a cluster each task reserves `runner.gpus_per_task` GPUs (Dask resources,
Ray `num_gpus`), so the scheduler never puts two models on one GPU; a worker advertises its GPUs
(`dask worker ... --resources GPU=1` with CUDA_VISIBLE_DEVICES naming them) and the task then trains on the first
visible device. On one multi-GPU machine with threads, models go round robin over the local GPUs instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from dfd.platform.config import Params, RunnerParams
from dfd.platform.errors import ConfigError
from dfd.platform.layout import Layout
from dfd.platform.threads import threads_each
from dfd.platform.tracking import Tracker
from flows.cancel import stop_children_on_termination
from flows.stages import train_task
from tasks.train import TrainResult


def task_runner(cfg: RunnerParams) -> TaskRunner:
    """The task runner `runner.kind` names (a ConfigError naming the extra to install when it is missing)."""
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    try:
        if cfg.kind == "dask":
            from prefect_dask import DaskTaskRunner

            if cfg.address:
                return DaskTaskRunner(address=cfg.address)
            # Processes, one thread each: a model per worker process, as on a real cluster.
            kwargs: dict[str, Any] = {"n_workers": cfg.dask_workers, "processes": True, "threads_per_worker": 1}
            if cfg.gpus_per_task:
                kwargs["resources"] = {"GPU": cfg.gpus_per_task}
            return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=cfg.address) if cfg.address else RayTaskRunner()
    except ImportError:
        raise ConfigError(f"runner.kind '{cfg.kind}' needs prefect-{cfg.kind}",
                          f"pip install 'dfd[{cfg.kind}]', or set runner.kind: threads") from None


@contextlib.contextmanager
def _gpu_request(cfg: RunnerParams) -> Iterator[None]:
    """Annotate the submitted tasks with the GPUs each needs, so the cluster scheduler places them."""
    if cfg.kind == "dask" and cfg.gpus_per_task:
        import dask

        with dask.annotate(resources={"GPU": cfg.gpus_per_task}):
            yield
    elif cfg.kind == "ray" and cfg.gpus_per_task:
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=cfg.gpus_per_task):
            yield
    else:
        yield


def trainings_at_once(params: Params) -> int | None:
    """How many trainings share this machine's cores at once; None on a cluster (each worker's machine decides)."""
    cfg = params.runner
    if cfg.kind == "threads":
        return min(cfg.max_workers, len(params.models))
    if cfg.kind == "dask" and not cfg.address:  # a local cluster: one training per worker process, all here
        return min(cfg.dask_workers, len(params.models))
    return None


def train_all(params: Params, layout: Layout, tracker: Tracker, parent: str) -> list[TrainResult]:
    """Train every model in params as parallel tasks on the configured runner; wait for all, fail if any failed."""
    cfg = params.runner
    local_gpus = torch.cuda.device_count() if cfg.kind == "threads" else 0  # a cluster assigns GPUs itself
    at_once = trainings_at_once(params)
    # torch_threads auto: each training's share of the cores, computed here where the concurrency is known.
    threads = threads_each(at_once) if params.train.torch_threads == "auto" and at_once else None
    with task_runner(cfg) as runner, _gpu_request(cfg):
        futures = []
        for i, model in enumerate(params.models):
            gpu = i % local_gpus if local_gpus > 1 else None
            futures.append(runner.submit(train_task, parameters={"params": params, "layout": layout, "tracker": tracker,
                                                           "parent": parent, "model": model, "gpu": gpu,
                                                           "threads": threads}))
        # Stop the children here, before the runner's exit waits on threads blocked on them until they finish.
        with stop_children_on_termination():
            return [fut.result() for fut in futures]
