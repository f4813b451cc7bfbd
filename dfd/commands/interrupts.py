"""Ctrl-C and SIGTERM: stop the training children within seconds and leave resumable state."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


class Interrupted(KeyboardInterrupt):
    """SIGTERM (docker stop, timeout) handled like Ctrl-C: `finally` blocks run, children stop, state is resumable."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def on_signal(signum: int, frame: Any) -> None:
    # Stop the training children first (from a thread: a handler must return quickly), then unwind this process.
    if "flows.train_process" in sys.modules:
        from flows.train_process import stop_all_children

        threading.Thread(target=stop_all_children, name="dfd-stop-children", daemon=True).start()
    raise Interrupted(signum)


def interrupt_signal(exc: BaseException) -> int | None:
    """The signal behind `exc` when it is an interrupt: Ctrl-C, our SIGTERM handler, or Prefect's own (a flow run
    replaces the SIGTERM handler with one raising TerminationSignal); None for any other exception."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    signum = getattr(exc, "signal", None) if type(exc).__name__ == "TerminationSignal" else None
    return int(signum) if signum is not None else None


def stop_now(signum: int) -> None:
    """Stop an interrupted flow run within seconds: kill the training children, then leave without unwinding.

    A normal exit would wait for Prefect's task threads (each blocked on a child until it finishes training) and
    for its log and event workers to flush to the temporary server. Every finished output is already on disk, each
    model's last.pt included, so the next run resumes; the temporary server stops by its parent-death signal.
    """
    from flows.train_process import stop_all_children

    stop_all_children()
    print("dfd: interrupted; finished outputs are kept and the next run resumes from them", file=sys.stderr,
          flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)
