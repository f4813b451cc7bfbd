"""Atomic writes for everything a rerun reads back (reports, indexes, caches), and reading them back safely.

A file is written to a temporary name in the same folder and renamed over the target (`os.replace` is atomic on
POSIX), so a killed or failing run leaves either the old file or the new one, never half of one, and no temporary
file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed.

    The file gets the mode a plain `open()` would give it (0666 less the umask: 0644 usually), not mkstemp's 0600,
    so that others on a team can read reports.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # name the file the user asked for, not our temporary name
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename in (None, str(tmp), tmp):  # name the file the user knows (writers like pyarrow name none)
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: Path, data: Any, *, indent: int | None = 2) -> Path:
    """Write JSON atomically (temp file + rename), so a killed run never leaves half a report."""
    body = json.dumps(data, indent=indent, sort_keys=True, default=str)
    return write_text(path, body + "\n")


def write_parquet(df: Any, path: Path) -> Path:
    """Write a pandas DataFrame to parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(path.read_text())


def read_cache_json(path: Path) -> Any | None:
    """Read a cache file a rerun trusts; a truncated or corrupt one is named, removed and None returned (rebuild).

    Only for files the code can rebuild (e.g. a sample's faces.json): reports and inputs use `read_json`.
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("discarding corrupt cache file %s (%s); it will be rebuilt", path, type(exc).__name__)
        path.unlink(missing_ok=True)
        return None


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file read in 1 MiB blocks (md5 is what DVC uses; sha256 for deployment manifests)."""
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
