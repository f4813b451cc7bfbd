"""Ctrl-C and SIGTERM: stop the training children within seconds and leave resumable state.

What counts as an interrupt (`Interrupted`, `interrupt_signal`) lives in `dfd.platform.interrupts`, which the flows
import too; this module holds the CLI's handlers, which reach the training children in `flows.train_process`.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from dfd.platform.interrupts import Interrupted


def on_signal(signum: int, frame: Any) -> None:
    # Stop the training children first (from a thread: a handler must return quickly), then unwind this process.
    if "flows.train_process" in sys.modules:
        from flows.train_process import stop_all_children

        threading.Thread(target=stop_all_children, name="dfd-stop-children", daemon=True).start()
    raise Interrupted(signum)


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
