"""The memory of a server's whole process tree, sampled while it runs: `dfd serve` scores in worker processes.

`dfd serve` (process isolation, the default) is a server process, a forkserver it starts, and one worker per
`serve.max_concurrent` slot forked from that forkserver, each with its own model copy; `mlflow models serve` execs
uvicorn under its own process. The server process alone is a fraction of either.

What is summed: PSS (proportional set size) of every process in the tree. The workers fork from a forkserver that
imported torch, MLflow and dfd once, so those pages are shared copy-on-write; RSS counts a shared page once in
every process that maps it (summed RSS overstates the tree by the shared libraries times the processes), PSS
divides it among them, so the PSS sum is what the tree really holds. No kernel counter keeps a peak of PSS: it is
sampled (every `interval_s`) and the peak kept; the summed RSS and the summed VmHWM (each process's own kernel
peak, which catches spikes between samples but counts shared pages in each process) are reported beside it as
upper bounds.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import psutil


@dataclass
class TreePeak:
    """Peaks over the samples, in MiB, and the most processes seen at once."""

    pss_mib: float = 0.0
    rss_mib: float = 0.0
    hwm_mib: float = 0.0  # sum of each process's VmHWM at the sample where that sum peaked
    processes: int = 0
    samples: int = 0
    by_name: dict[str, float] = field(default_factory=dict)  # PSS per process kind at the PSS peak

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.by_name.items()))
        return (f"peak PSS {self.pss_mib:6.0f} MiB over {self.processes} processes ({kinds}); "
                f"summed RSS {self.rss_mib:.0f}, summed VmHWM {self.hwm_mib:.0f} MiB; {self.samples} samples")


def _kind(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "server"
    with contextlib.suppress(psutil.Error):
        cmd = " ".join(proc.cmdline())
        if "forkserver" in cmd:  # the forkserver, and the workers forked from it (same command line, no exec)
            return "forkserver" if proc.ppid() == root else "worker"
        if "resource_tracker" in cmd:
            return "tracker"
        if proc.name().startswith("ffmpeg"):
            return "ffmpeg"
    return "worker"


class TreeMemory:
    """Sample `pid` and all its descendants in a thread until stopped (use as a context manager).

    Args:
        pid: The server process.
        interval_s: Time between samples (each reads /proc/PID/smaps_rollup of every process).
    """

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.root, self.interval_s = psutil.Process(pid), interval_s
        self.peak = TreePeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def sample(self) -> None:
        """One sample of the whole tree; raises the peaks it passes."""
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        pss = rss = hwm = 0.0
        kinds: dict[str, float] = {}
        for p in procs:
            try:
                mem = p.memory_full_info()
                with open(f"/proc/{p.pid}/status") as f:
                    peak_kib = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
            except (psutil.Error, OSError, StopIteration):  # it exited between the listing and the read
                continue
            mib = mem.pss / 2**20
            pss, rss, hwm = pss + mib, rss + mem.rss / 2**20, hwm + peak_kib / 1024
            kind = _kind(p, self.root.pid)
            kinds[kind] = kinds.get(kind, 0.0) + mib
        self.peak.samples += 1
        self.peak.processes = max(self.peak.processes, len(procs))
        self.peak.rss_mib, self.peak.hwm_mib = max(self.peak.rss_mib, rss), max(self.peak.hwm_mib, hwm)
        if pss > self.peak.pss_mib:
            self.peak.pss_mib, self.peak.by_name = pss, kinds

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()  # the state at the end counts too
