"""Run train@M in a child process (`dfd stage train`), streaming its per-epoch metrics back to the caller.

Why a process per model, not a thread: PyTorch has one default random generator per process, so models training in
threads of one process draw each other's dropout and augmentation numbers and a flow run stops being reproducible.
A child process also isolates crashes and memory (an OOM kills one model, and the retry resumes from its last.pt),
gets its own GPU when there are several, and is exactly what `dvc repro` runs: same code, same bits.

MLflow stays in the parent: the child appends one JSON line per epoch to a file the parent tails, so four children
never write to one sqlite store at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import IO

import yaml

from dfd.platform.config import Params
from dfd.platform.errors import DfdError, StageError
from dfd.platform.files import read_json
from dfd.platform.layout import Layout
from dfd.platform.procs import child_env, stop_group
from dfd.platform.threads import THREADS_ENV
from tasks.train import EpochCallback, TrainResult, model_spec

POLL_S = 1.0  # how often the parent looks for new epochs: epochs take minutes, a second of lag is nothing
TEMP_PREFIX = "dfd-train-"
STOP_GRACE_S = 10.0  # a child told to stop gets this long before SIGKILL (its last.pt is written atomically anyway)

# Children running now, so that a signal handler in the main thread can stop them all at once: the task threads
# that started them are blocked waiting, and Python's exit would otherwise wait for every model to finish.
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()
_TEMP_DIRS: set[str] = set()  # their temporary folders, removed by `stop_all_children` too (an exit may not wait)


def _remove_stale_temp_dirs() -> None:
    """Remove `dfd-train-<model>-<pid>-*` folders left by a flow process that was SIGKILLed (no cleanup ran)."""
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        parts = path.name.removeprefix(TEMP_PREFIX).rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) == os.getpid():
            continue
        try:
            os.kill(int(parts[1]), 0)  # the owner is alive: not ours to remove
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def stop_all_children(grace_s: float = STOP_GRACE_S) -> int:
    """Stop every training child (and its process group) now; later launches are refused. Returns how many."""
    _STOPPING.set()
    with _LIVE_LOCK:
        procs = list(_LIVE)
    threads = [threading.Thread(target=stop_group, args=(p, grace_s), daemon=True) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(grace_s + 5)
    for tmp in list(_TEMP_DIRS):
        shutil.rmtree(tmp, ignore_errors=True)
    return len(procs)


class EpochTail:
    """Reads complete JSON lines appended to `path` since the last call (a line is written whole at epoch end)."""

    def __init__(self, path: Path, on_epoch: EpochCallback | None) -> None:
        self.path, self.on_epoch, self.offset = path, on_epoch, 0

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # a half-written last line waits for the next poll
        self.offset += end
        for line in chunk[:end].splitlines():
            record = json.loads(line)
            if self.on_epoch:
                self.on_epoch(record["epoch"], record["metrics"])


def _forward(stream: IO[str], name: str, tail: deque[str]) -> None:
    """Copy the child's output to our stderr, prefixed with the model, keeping the last lines for errors."""
    for raw in iter(stream.readline, ""):
        line = raw.rstrip("\n")
        tail.append(line)
        print(f"[train@{name}] {line}", file=sys.stderr, flush=True)


def train_in_process(params: Params, layout: Layout, name: str, on_epoch: EpochCallback | None = None,
                     gpu: int | None = None, progress: bool = False, threads: int | None = None) -> TrainResult:
    """Train model `name` in a `dfd stage train` child process and return what it wrote.

    Args:
        params: The resolved params (written to a temporary file for the child, so it sees exactly these).
        layout: Output paths; the child runs in `layout.root`.
        name: The model's key under `models:`.
        on_epoch: Called in this process with (epoch, metrics) as each epoch ends in the child.
        gpu: Pin the child to this CUDA device (CUDA_VISIBLE_DEVICES); None leaves the environment alone.
        progress: Let the child draw its per-step progress bar (off by default: its output is relayed line by line,
            and the per-epoch lines say enough).
        threads: The child's share of the cores when `train.torch_threads` is `auto` (`$DFD_TORCH_THREADS`; the
            caller knows how many train at once); None: the child takes every core.

    Raises:
        StageError: The child stopped with one of our own errors (bad data, divergence): its message, not retried.
        RuntimeError: The child crashed or was killed: transient, so a retry resumes from its last checkpoint.
    """
    model_spec(params, name)  # an unknown model fails here, before a process starts
    if _STOPPING.is_set():
        raise StageError(f"train@{name}: not started, the run is stopping")
    _remove_stale_temp_dirs()
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{name}-{os.getpid()}-", ignore_cleanup_errors=True) as tmp:
        _TEMP_DIRS.add(tmp)
        resolved, epochs = Path(tmp) / "params.yaml", Path(tmp) / "epochs.jsonl"
        resolved.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        cmd = [sys.executable, "-m", "dfd.cli", "--params", str(resolved), "stage", "train", "--model", name,
               "--epoch-log", str(epochs)] + ([] if progress else ["--no-progress"])
        env = {k: v for k, v in os.environ.items() if k != "DFD_PARAMS_OVERRIDE"}  # the file above is complete
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        if threads is not None:
            env[THREADS_ENV] = str(threads)
        tail, lines = EpochTail(epochs, on_epoch), deque(maxlen=40)
        # Its own process group (stopped as a whole, with its DataLoader workers) and a parent-death signal: a
        # SIGKILLed flow leaves no child training on, holding a GPU and writing artifacts.
        posix = os.name == "posix"
        group = {"process_group": 0} if posix else {}
        proc = subprocess.Popen(cmd, cwd=layout.root, env=child_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, **group)
        assert proc.stdout is not None  # stdout=PIPE
        with _LIVE_LOCK:
            _LIVE.add(proc)
        reader = threading.Thread(target=_forward, args=(proc.stdout, name, lines), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(POLL_S)
                tail.poll()
            reader.join()
            tail.poll()
        finally:
            if proc.poll() is None:  # we were interrupted or failed: do not leave an orphan holding a GPU
                if posix:
                    stop_group(proc, STOP_GRACE_S)
                else:
                    proc.terminate()
                    proc.wait()
            with _LIVE_LOCK:
                _LIVE.discard(proc)
            _TEMP_DIRS.discard(tmp)
    if _STOPPING.is_set():  # stopped on purpose: not a crash to retry
        raise StageError(f"train@{name}: stopped; its last finished epoch is in {layout.model_dir(name) / 'last.pt'}")
    if proc.returncode == DfdError.exit_code:
        errors = [ln.removeprefix("dfd: error: ") for ln in lines if ln.startswith("dfd: error: ")]
        raise StageError(f"train@{name}: {errors[-1] if errors else 'failed'}")
    if proc.returncode != 0:
        last = "\n".join(list(lines)[-10:])
        raise RuntimeError(f"train@{name} exited with code {proc.returncode}; its last output:\n{last}")
    out_dir = layout.model_dir(name)
    return TrainResult(name, out_dir, out_dir / "best.pt", out_dir / "last.pt", out_dir / "metrics.json",
                       out_dir / "predictions.parquet", read_json(out_dir / "metrics.json"))
