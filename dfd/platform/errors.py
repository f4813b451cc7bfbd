"""User-facing errors: each says what is wrong, where, and how to fix it, in one line."""

from __future__ import annotations


class DfdError(Exception):
    """An error the CLI prints as one line (no traceback) before exiting non-zero.

    Args:
        message: What is wrong and where.
        hint: How to fix it, appended after the message.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(DfdError):
    """The params file is missing, malformed, or holds an unknown key or a wrong type."""


class DataError(DfdError):
    """Input data is missing, empty, or too broken to go on."""


class StageError(DfdError):
    """A stage cannot run because an upstream output is missing or inconsistent."""


class TrainingError(DfdError):
    """Training diverged (NaN or infinite loss) or cannot proceed."""


class StorageError(DfdError):
    """Object storage (S3) is unreachable, refuses access, or a transfer failed."""


class TrackingError(DfdError):
    """The MLflow tracking server stopped answering (after bounded retries)."""
