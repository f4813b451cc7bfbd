"""What an interrupt is: Ctrl-C, SIGTERM turned into an exception, or Prefect's own termination signal.

The CLI (which installs the handlers) and the flows (which stop the training children when a signal unwinds them)
both need to recognise one; it lives here, below both, so neither imports the other.
"""

from __future__ import annotations

import signal


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
