"""Child processes that never outlive their parent: a parent-death signal and process groups.

A SIGKILLed parent runs no cleanup, so the only guarantees are the kernel's: on Linux `prctl(PR_SET_PDEATHSIG)` asks
it to signal the child when the thread that started it dies. Process groups let a parent stop a child together with
everything that child started (torchrun's workers, DataLoader workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux only; elsewhere a no-op).

    Call it first thing in a child (a pool initializer, `arm_from_env`). With `parent_pid`, a parent that died
    before the call (the child was re-parented) makes the child exit at once instead of running as an orphan.

    Returns:
        Whether the signal is armed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return True


PARENT_ENV = "DFD_DIE_WITH_PARENT"  # set by a parent to its pid: the child arms the parent-death signal at start


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus the variable that makes a `dfd` child call `die_with_parent` as it starts (see `arm_from_env`).

    Why not a `preexec_fn`: it runs between fork and exec, where a multi-threaded parent (Prefect's task threads)
    can deadlock the child; the child arming itself is safe, and checking the pid closes the race.
    """
    return {**env, PARENT_ENV: str(os.getpid())}


def arm_from_env() -> None:
    """In a `dfd` child: die with the parent named in the environment; exit now if it is already gone."""
    expected = os.environ.pop(PARENT_ENV, None)
    if expected and expected.isdigit():
        die_with_parent(parent_pid=int(expected))


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, wait up to `grace_s` for it, then SIGKILL what is left of the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # grandchildren that ignored SIGTERM, or the leader itself
    proc.wait()
