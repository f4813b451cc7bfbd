"""Scoring in kept-alive worker processes that the server kills and replaces when a request overruns its timeout.

A decoder stuck in C (a progressive JPEG's thousands of scans, a frame bomb) never reaches a cancel check, so a
thread cannot be stopped; a process can. `WorkerPool` holds one process per `serve.max_concurrent` slot, each with
its own copy of the model (forked from a clean forkserver: no inherited locks or threads), an address-space
limit (`RLIMIT_AS`, `serve.worker_memory_bytes`) and, for each request, a CPU-time limit (`RLIMIT_CPU`, set
afresh to the CPU used so far plus the request's share). The server waits `serve.request_timeout_s` for an
answer, then kills the worker (SIGKILL), answers 504, and starts a replacement in the background; the slot is
free again once the replacement has loaded the model, so hostile requests cost their slot a restart, never the
server its capacity.

A job is a picklable callable `job(model, check_cancel)` (a module-level function under `functools.partial`); it
names the model version it wants (`ModelSpec`). When the alias has moved, the worker that takes the job first
loads that version, as a step of its own bounded by `LOAD_TIMEOUT_S` (a large ensemble may take longer to load
than a request may take to score), then scores; a replacement loads the version being served when it starts. Each
answer says which version scored it, and the pool refuses one from any other registry version than the job named.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dfd.platform.config import ServeParams
from dfd.serving.limits import SlotsBusy
from dfd.serving.media_scoring import CROP_CHUNK

log = logging.getLogger(__name__)
T = TypeVar("T")
LOAD_TIMEOUT_S = 600.0  # a worker that has not loaded its model by then is broken, not slow


class WorkerFailed(Exception):
    """The worker died or raised: `reason` is a result reason (`too_large` for its memory limit, `internal`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: a pinned model (`models:/name/N` or a folder) and how."""

    uri: str
    tracking_uri: str
    precision: str = "fp32"
    max_precision_error: float = 0.02
    engine: str = "torch"  # serve.engine: what runs the members in the worker
    version: str | None = None  # the registry version `uri` pins (None: a folder)

    @classmethod
    def of(cls, model: Any, tracking_uri: str, cfg: ServeParams) -> ModelSpec:
        """The spec that loads exactly `model` (a `LoadedModel`): its registry version, never the alias; a folder
        (`serve --from`'s checked private copy) by its path, although its manifest names a registry version: the
        workers must load the files that were checked, never fetch the version from a registry."""
        if str(model.uri).startswith("models:/") and model.name and model.version:
            return cls(f"models:/{model.name}/{model.version}", tracking_uri, cfg.precision, cfg.max_precision_error,
                       cfg.engine, str(model.version))
        return cls(str(model.uri), tracking_uri, cfg.precision, cfg.max_precision_error, cfg.engine)

    def load(self) -> Any:
        from dfd.serving.registry_model import load

        return load(self.uri, self.tracking_uri, self.precision, self.max_precision_error, self.engine)


# -- jobs: run inside a worker (or a thread, with isolation: thread) ---------------------------------------------


def predict_crops(model: Any, check: Callable[[], None], crops: np.ndarray) -> np.ndarray:
    """P(fake) of face crops, checking for cancellation between chunks."""
    out = []
    for i in range(0, len(crops), CROP_CHUNK):
        check()
        out.append(np.asarray(model.python_model.predictor(crops[i:i + CROP_CHUNK]), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def score_upload(model: Any, check: Callable[[], None], path: Path, name: str, aggregate: str | None,
                 cfg: ServeParams) -> Any:
    """One uploaded file (a private copy) scored under the server's limits."""
    return model.python_model.scorer.score_upload(path, name, aggregate, check, cfg)


def score_paths(model: Any, check: Callable[[], None], files: list[tuple[str, Path | Any]],
                aggregate: str | None, cfg: ServeParams) -> list[Any]:
    """Files of a path list (private copies, or the result that refused one), checking between files."""
    scorer = model.python_model.scorer
    out = []
    for shown, copy in files:
        check()
        # a MediaResult already when the file was refused before it was copied
        out.append(scorer.score_upload(copy, shown, aggregate, check, cfg) if isinstance(copy, Path) else copy)
    return out


# -- the worker process -------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _never() -> None:
    """A worker's cancel check: the server kills the process instead."""


def _worker_main(conn: Any, spec: ModelSpec, memory_bytes: int, threads: int) -> None:
    os.setpgrp()  # its own process group: killing the worker kills the FFmpeg it may have started (check_frames)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import torch

    torch.set_num_threads(threads)  # the workers share the cores: n workers x all cores would oversubscribe
    t0 = time.monotonic()
    model = spec.load()
    conn.send(("ready", time.monotonic() - t0))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server went away
            return
        reply: tuple[str, Any]
        try:
            if message[0] == "load":  # the alias moved: load the version asked for (the old one until it has)
                t0 = time.monotonic()
                model = message[1].load()
                reply = ("ready", time.monotonic() - t0)
            else:
                _, job, cpu_s = message
                # SIGXCPU (which ends the process) once this request has used its CPU share on top of what was used
                resource.setrlimit(resource.RLIMIT_CPU, (int(_cpu_seconds() + cpu_s) + 1, hard))
                reply = ("ok", (job(model, _never), None if model.version is None else str(model.version)))
        except MemoryError:
            reply = ("memory", None)
        except Exception as exc:  # the job's bug: the server logs it, the client gets no internals
            reply = ("error", f"{type(exc).__name__}: {exc}"[:500])
        conn.send(reply)


class _Worker:
    """One process and its end of the pipe."""

    def __init__(self, ctx: Any, spec: ModelSpec, memory_bytes: int, threads: int) -> None:
        self.spec = spec  # the version loaded in it
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, spec, memory_bytes, threads),
                                name="dfd-score-worker", daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(LOAD_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"a scoring worker did not load its model in {LOAD_TIMEOUT_S:.0f} s")
        status, self.load_s = self.conn.recv()  # EOFError when it died while loading
        assert status == "ready"

    def roundtrip(self, message: tuple[Any, ...]) -> tuple[str, Any]:
        self.conn.send(message)
        return self.conn.recv()

    def reload(self, spec: ModelSpec) -> float:
        """Load `spec` in place of the loaded version; the seconds it took.

        Raises:
            RuntimeError: The load failed (the worker keeps the version it had).
        """
        status, value = self.roundtrip(("load", spec))
        if status != "ready":
            raise RuntimeError(f"loading {spec.uri} failed: {value}")
        self.spec = spec
        return value

    def kill(self) -> None:
        if self.proc.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and its children, e.g. an FFmpeg decode
        if self.proc.is_alive():  # killed before it had its own group
            self.proc.kill()
        self.proc.join(10)  # the pipe closes with this object: an I/O thread may still be reading it


class WorkerPool:
    """`n` worker processes behind `serve.max_concurrent` slots.

    Args:
        n: Workers (= slots).
        spec: The model to preload.
        cfg: `serve:` params (timeouts, memory limit).
        current: The version being served now (the holder's, after an alias move): what a replacement worker loads;
            `spec` when not given.
    """

    def __init__(self, n: int, spec: ModelSpec, cfg: ServeParams,
                 current: Callable[[], ModelSpec] | None = None) -> None:
        self.n, self.spec, self.cfg = n, spec, cfg
        self.current = current or (lambda: spec)
        self.threads = max(1, (os.cpu_count() or 1) // n)
        # Workers fork from a clean server process that imported torch, MLflow and dfd once (a spawned worker
        # would import them again at every restart); it holds no model, no threads of the server, no locks.
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["torch", "mlflow.pyfunc", "dfd.serving.registry_model",
                                          "dfd.serving.media_scoring", "dfd.serving.workers"])
        self._io = ThreadPoolExecutor(2 * n + 2, thread_name_prefix="dfd-worker-io")
        self._idle: asyncio.Queue[_Worker] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self.restarts = 0
        self.load_seconds: list[float] = []  # each worker's model load, restarts included: what a restart costs

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self.current(), self.cfg.worker_memory_bytes, self.threads)
        with self._lock:
            self._all.add(w)
        self.load_seconds.append(w.load_s)
        return w

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the model (at server start)."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        workers = await asyncio.gather(*(asyncio.to_thread(self._spawn) for _ in range(self.n)))
        for w in workers:
            self._idle.put_nowait(w)

    def _replace(self, dead: _Worker) -> None:
        """Kill `dead` and start its replacement, which takes the slot once loaded (in a thread of its own)."""
        dead.kill()
        with self._lock:
            self._all.discard(dead)
        self.restarts += 1

        def respawn() -> None:
            while not self._stopping.is_set():
                try:
                    fresh = self._spawn()
                except Exception as exc:  # the registry is down, the model moved: try again, say why in the log
                    log.error("scoring worker failed to start (%s); retrying in 5 s", type(exc).__name__)
                    self._stopping.wait(5)
                    continue
                assert self._loop is not None and self._idle is not None
                with contextlib.suppress(RuntimeError):  # the loop closed: the server is exiting
                    self._loop.call_soon_threadsafe(self._idle.put_nowait, fresh)
                return

        threading.Thread(target=respawn, name="dfd-worker-respawn", daemon=True).start()

    async def run(self, job: Callable[[Any, Callable[[], None]], T], spec: ModelSpec,
                  timeout_s: float | None = None) -> T:
        """`job(model, check)` in a free worker within `timeout_s` (default `request_timeout_s`).

        Raises:
            SlotsBusy: No worker came free within `slot_wait_s`.
            TimeoutError: Past the timeout (or the CPU limit): the worker was killed and is being replaced.
            WorkerFailed: The job raised, or hit the worker's memory limit.
        """
        assert self._idle is not None, "WorkerPool.start() was not awaited"
        try:
            worker = await asyncio.wait_for(self._idle.get(), self.cfg.slot_wait_s)
        except TimeoutError:
            raise SlotsBusy from None
        loop = asyncio.get_running_loop()
        if worker.spec != spec:
            await self._reload(worker, spec)
        timeout_s = timeout_s or self.cfg.request_timeout_s
        cpu_s = timeout_s * self.threads  # a request's CPU share: the timeout on its cores
        future = loop.run_in_executor(self._io, worker.roundtrip, ("job", job, cpu_s))
        try:
            status, value = await asyncio.wait_for(future, timeout_s)
        except (TimeoutError, asyncio.CancelledError):  # overran, or the client went away: stop it the hard way
            self._replace(worker)
            raise
        except (EOFError, OSError):  # it died: the CPU limit (SIGXCPU), the kernel's OOM killer, a crash
            code = worker.proc.exitcode
            self._replace(worker)
            raise TimeoutError(f"the scoring worker died (exit {code})") from None
        if status == "ok":
            self._idle.put_nowait(worker)
            result, scored_by = value
            if spec.version is not None and scored_by != spec.version:  # never answer for a version that did not score
                log.error("a worker scored with version %s, asked for %s", scored_by, spec.version)
                raise WorkerFailed("internal", "see the server log")
            return result
        self._replace(worker)  # a MemoryError or a bug may leave it in any state: start clean
        if status == "memory":
            raise WorkerFailed("too_large", f"over the worker's memory limit (serve.worker_memory_bytes="
                                            f"{self.cfg.worker_memory_bytes})")
        log.error("scoring job failed in a worker: %s", value)
        raise WorkerFailed("internal", "see the server log")

    async def _reload(self, worker: _Worker, spec: ModelSpec) -> None:
        """Load `spec` in `worker` before its job (the alias moved), within LOAD_TIMEOUT_S, not the request's
        timeout.

        Raises:
            WorkerFailed: The load failed (the worker goes back to the pool with its old version) or overran (the
                worker is replaced).
        """
        assert self._idle is not None
        loop = asyncio.get_running_loop()
        try:
            load_s = await asyncio.wait_for(loop.run_in_executor(self._io, worker.reload, spec), LOAD_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError, EOFError, OSError):
            self._replace(worker)
            raise WorkerFailed("internal", "the scoring worker did not load the new model version") from None
        except RuntimeError as exc:
            self._idle.put_nowait(worker)
            log.error("scoring worker kept version %s: %s", worker.spec.version, exc)
            raise WorkerFailed("internal", "see the server log") from None
        self.load_seconds.append(load_s)
        log.info("scoring worker loaded %s in %.1f s", spec.uri, load_s)

    def shutdown(self) -> None:
        """Stop every worker (at server exit)."""
        self._stopping.set()
        with self._lock:
            workers, self._all = list(self._all), set()
        for w in workers:
            w.kill()
        self._io.shutdown(wait=False, cancel_futures=True)
