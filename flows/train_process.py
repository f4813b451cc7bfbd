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
from tasks.train import EpochCallback, TrainResult, model_spec

POLL_S = 1.0  # how often the parent looks for new epochs: epochs take minutes, a second of lag is nothing


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
                     gpu: int | None = None, progress: bool = False) -> TrainResult:
    """Train model `name` in a `dfd stage train` child process and return what it wrote.

    Args:
        params: The resolved params (written to a temporary file for the child, so it sees exactly these).
        layout: Output paths; the child runs in `layout.root`.
        name: The model's key under `models:`.
        on_epoch: Called in this process with (epoch, metrics) as each epoch ends in the child.
        gpu: Pin the child to this CUDA device (CUDA_VISIBLE_DEVICES); None leaves the environment alone.
        progress: Let the child draw its per-step progress bar (off by default: its output is relayed line by line,
            and the per-epoch lines say enough).

    Raises:
        StageError: The child stopped with one of our own errors (bad data, divergence): its message, not retried.
        RuntimeError: The child crashed or was killed: transient, so a retry resumes from its last checkpoint.
    """
    model_spec(params, name)  # an unknown model fails here, before a process starts
    with tempfile.TemporaryDirectory(prefix=f"dfd-train-{name}-") as tmp:
        resolved, epochs = Path(tmp) / "params.yaml", Path(tmp) / "epochs.jsonl"
        resolved.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        cmd = [sys.executable, "-m", "dfd.cli", "--params", str(resolved), "stage", "train", "--model", name,
               "--epoch-log", str(epochs)] + ([] if progress else ["--no-progress"])
        env = {k: v for k, v in os.environ.items() if k != "DFD_PARAMS_OVERRIDE"}  # the file above is complete
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        tail, lines = EpochTail(epochs, on_epoch), deque(maxlen=40)
        proc = subprocess.Popen(cmd, cwd=layout.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None  # stdout=PIPE
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
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if proc.returncode == DfdError.exit_code:
        errors = [ln.removeprefix("dfd: error: ") for ln in lines if ln.startswith("dfd: error: ")]
        raise StageError(f"train@{name}: {errors[-1] if errors else 'failed'}")
    if proc.returncode != 0:
        last = "\n".join(list(lines)[-10:])
        raise RuntimeError(f"train@{name} exited with code {proc.returncode}; its last output:\n{last}")
    out_dir = layout.model_dir(name)
    return TrainResult(name, out_dir, out_dir / "best.pt", out_dir / "last.pt", out_dir / "metrics.json",
                       out_dir / "predictions.parquet", read_json(out_dir / "metrics.json"))
