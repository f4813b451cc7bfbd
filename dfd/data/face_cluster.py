"""Face extraction on a Dask cluster: chunks of samples go to the workers, which write crops themselves.

Every worker must see the dataset root and the output folder at the same paths as the client (a shared
filesystem), and have this project installed. A worker extracts each sample of its chunk exactly as the local
pool does (`extract_sample`: same crops, same records), writing crops and `faces.json` atomically, and returns the
records; the client assembles the index. When a worker dies mid-chunk, the scheduler runs the chunk again on
another worker: samples already finished are read back from their records, the rest are extracted again, and no
half-written file is ever trusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from dfd.data.face_extract import cached, extract_sample
from dfd.platform.errors import ConfigError

#: Chunks per worker when `runner.faces_chunk` is unset: enough that a slow chunk (long videos) does not leave the
#: other workers idle at the end, few enough that the scheduler's per-task cost stays negligible.
CHUNKS_PER_WORKER = 8
MAX_AUTO_CHUNK = 64
CONNECT_TIMEOUT_S = 20  # an unreachable scheduler fails the stage in seconds, not minutes


def extract_chunk(samples: list[dict[str, Any]], root: str, out_dir: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Extract faces of a chunk of samples on a worker (skipping those a previous attempt finished); their records."""
    import cv2

    cv2.setNumThreads(1)  # one thread per worker process: the workers already fill the cores
    out = []
    for sample in samples:
        done = cached(sample, root, out_dir, cfg)
        # Every sample sent here was pending when the run started: one already recorded was extracted by an
        # earlier attempt of this chunk (on a worker that died), so it counts as extracted, not skipped.
        out.append({**done, "skipped": False} if done else extract_sample(sample, root, out_dir, cfg))
    return out


@contextlib.contextmanager
def dask_client(address: str | None, n_workers: int, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A client of the scheduler at `address` (given up after `timeout_s`), or of a local cluster of `n_workers`
    single-threaded processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("runner.kind 'dask' needs dask.distributed",
                          "pip install 'dfd[dask]', or set runner.kind: threads") from None
    if address:
        try:
            client = Client(address, timeout=timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__})",
                              "start it (`dask scheduler`) or fix runner.address") from None
        with client:
            yield client
        return
    # Dashboard on a free port: two local clusters on one machine must not fight over :8787. The cluster's own
    # start/stop chatter (INFO) would bury the stage's output: warnings and errors only.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1, dashboard_address=":0",
                      silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        yield client


def chunk_size(n_samples: int, n_workers: int, configured: int | None) -> int:
    """Samples per task: `configured`, else about CHUNKS_PER_WORKER per worker, at most MAX_AUTO_CHUNK."""
    if configured:
        return configured
    return max(1, min(MAX_AUTO_CHUNK, n_samples // (max(1, n_workers) * CHUNKS_PER_WORKER)))


def extract_on_dask(pending: list[dict[str, Any]], root: str, out_dir: str, cfg: dict[str, Any],
                    address: str | None, n_workers: int, chunk: int | None,
                    on_done: Callable[[int], None] = lambda n: None) -> list[dict[str, Any]]:
    """Extract `pending` samples over the cluster by chunks; their records in completion order.

    Args:
        pending: Manifest rows still to extract.
        root: Dataset root (the same path on every worker).
        out_dir: Crops folder (the same path on every worker).
        cfg: The `faces` params as a dict.
        address: Scheduler address, or None for a local cluster of `n_workers` processes.
        n_workers: Local cluster size (ignored with `address`).
        chunk: Samples per task (`runner.faces_chunk`), None for the default.
        on_done: Called with the number of samples of each finished chunk (the progress bar).
    """
    from distributed import as_completed

    with dask_client(address, n_workers) as client:
        workers = len(client.scheduler_info().get("workers", {})) or n_workers
        size = chunk_size(len(pending), workers, chunk)
        run = uuid.uuid4().hex[:8]  # unique keys: a rerun must not be answered from an earlier run's results
        futures = [client.submit(extract_chunk, pending[i:i + size], root, out_dir, cfg, pure=False,
                                 key=f"faces-{run}-{i // size}-{os.getpid()}")
                   for i in range(0, len(pending), size)]
        results: list[dict[str, Any]] = []
        try:
            for fut in as_completed(futures):
                records = fut.result()
                results.extend(records)
                on_done(len(records))
        except BaseException:
            client.cancel(futures)  # interrupted or failed: drop the queued chunks; finished samples are on disk
            raise
        return results
