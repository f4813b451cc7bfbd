"""Prefect's logging, made to suit the CLI: our own errors print as the one line that says what and where."""

from __future__ import annotations

import logging

from dfd.platform.errors import DfdError


class _NoTracebackForDfdErrors(logging.Filter):
    """Drop the traceback from log records of our own errors: their message already says what and where.

    Prefect logs a failed task and flow with the full stack; for a DfdError (bad data, bad params, a gate) that is
    noise in front of the one line that matters. Other exceptions keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DfdError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_failures() -> None:
    """Attach the filter to every handler Prefect configured (they do not all propagate to the root logger)."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                                       if name.startswith("prefect")]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if not any(isinstance(f, _NoTracebackForDfdErrors) for f in handler.filters):
            handler.addFilter(_NoTracebackForDfdErrors())
