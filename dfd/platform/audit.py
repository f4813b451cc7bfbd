"""The audit trail: who moved which alias, and who deployed what where, when.

One JSON object per line, appended with a single `write` on a file opened `O_APPEND` (concurrent writers on one
machine never interleave within a line; the product never rewrites or truncates the file). Who: the registry login
(`MLFLOW_TRACKING_USERNAME`) when there is one, else the operating-system user, and the host. Every value passes
`strip_credentials`: a URI in a record says where, never with what key. The file records what this machine did;
the registry's own record is the tags each move leaves on the model and its versions (`Tracker.set_alias`).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from dfd.platform.uris import strip_credentials


def actor() -> str:
    """Who is acting: `registry-login@host`, or `os-user@host` without a registry login."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (some containers)
            user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return strip_credentials(value) if isinstance(value, str) else value


class AuditLog:
    """An append-only JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, action: str, **what: Any) -> dict[str, Any]:
        """Append one record (`at`, `unix`, `by`, `action`, then `what`); returns it."""
        now = time.time()
        record = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "unix": round(now, 3),
                  "by": actor(), "action": action, **_clean(what)}
        line = (json.dumps(record, sort_keys=False, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return record

    def read(self) -> list[dict[str, Any]]:
        """Every record, oldest first ([] when there is no file yet)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def audit_log(path: str | None, root: Path) -> AuditLog | None:
    """The log `registry.audit_log` names (relative to the project `root`), or None when it is off."""
    if not path:
        return None
    p = Path(path)
    return AuditLog(p if p.is_absolute() else root / p)
