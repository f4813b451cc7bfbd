"""What an interrupt is: Ctrl-C, SIGTERM turned into an exception, or Prefect's own termination signal.

The CLI (which installs the handlers) and the flows (which stop the training children when a signal unwinds them)
both need to recognise one; it lives here, below both, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """SIGTERM (docker stop, timeout) handled like Ctrl-C: `finally` blocks run, children stop, state is resumable."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_signal(exc: BaseException) -> int | None:
    """The signal behind `exc` when it is an interrupt: Ctrl-C, our SIGTERM handler, or Prefect's own (a flow run
    replaces the SIGTERM handler with one raising TerminationSignal); None for any other exception."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    signum = getattr(exc, "signal", None) if type(exc).__name__ == "TerminationSignal" else None
    return int(signum) if signum is not None else None


@contextlib.contextmanager
def held_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[list[int]]:
    """Hold these signals while the body runs, then deliver them: a short last write is never cut in half.

    A second SIGTERM (or Ctrl-C) during a shutdown's final flush would otherwise raise inside it and end the
    process with the records still waiting. The caller bounds the body's time (a join timeout). Outside the main
    thread (where handlers cannot be set) the body simply runs.

    Yields:
        The signals received so far, in order (delivered again on exit).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, hold) for s in signums}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(received):  # each held signal once, in the order they came
            signal.raise_signal(s)
