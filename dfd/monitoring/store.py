"""Where traffic records live: a local folder or an S3 prefix, behind the four operations the log needs.

Only names the traffic log writes are ever listed, read or deleted (`day=YYYY-MM-DD/part-*.parquet`), so a log
folder shared with other files, or a bucket prefix holding other objects, loses nothing that dfd did not write.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from dfd.platform.config import StorageParams
from dfd.platform.files import atomic_path

# A record file's relative name: one folder per UTC day, parts named by when and by which process they were written.
PART_RE = re.compile(r"^day=(\d{4}-\d{2}-\d{2})/part-[0-9A-Za-z_.-]+\.parquet$")


class RecordStore(Protocol):
    """The operations of a record store; names are relative, `/`-separated, and match `PART_RE`."""

    where: str

    def put(self, name: str, data: bytes) -> None: ...

    def names(self) -> list[str]: ...

    def get(self, name: str) -> bytes: ...

    def delete(self, name: str) -> None: ...


class LocalStore:
    """A folder; parts are written atomically (a reader never sees half a file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in self.root.glob("day=*/part-*.parquet") if p.is_file())
        return sorted(n for n in found if PART_RE.match(n))

    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def delete(self, name: str) -> None:
        if not PART_RE.match(name):
            raise ValueError(f"not a traffic record: {name}")
        path = self.root / name
        path.unlink(missing_ok=True)
        # The day folder goes too once empty (and only then: rmdir refuses a folder with anything in it).
        with contextlib.suppress(OSError):
            os.rmdir(path.parent)


class S3Store:
    """An S3 prefix through boto3 (bounded retries from `storage:`)."""

    def __init__(self, uri: str, cfg: StorageParams) -> None:
        from dfd.platform.storage import parse_s3_uri, s3_client

        self.bucket, self.prefix = parse_s3_uri(uri)
        self.client = s3_client(cfg)
        self.where = uri

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def names(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        out = []
        with self._reading():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                out += [o["Key"][len(start):] for o in page.get("Contents", [])]
        return sorted(n for n in out if PART_RE.match(n))

    def get(self, name: str) -> bytes:
        with self._reading():
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """S3 failures as one line naming the store (an unreachable endpoint, a missing bucket, no rights)."""
        from botocore.exceptions import BotoCoreError, ClientError

        from dfd.platform.errors import StorageError
        from dfd.platform.storage import _describe

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot read traffic records at {self.where} ({_describe(exc)})",
                               "check monitor.log_dir, storage.endpoint_url and the credentials") from None

    def delete(self, name: str) -> None:
        if not PART_RE.match(name):
            raise ValueError(f"not a traffic record: {name}")
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))


def open_store(log_dir: str, storage: StorageParams, root: Path | None = None) -> RecordStore:
    """The store `monitor.log_dir` names: `s3://bucket/prefix`, or a folder (relative to `root`, the project)."""
    if log_dir.startswith("s3://"):
        return S3Store(log_dir, storage)
    path = Path(log_dir).expanduser()
    return LocalStore(path if path.is_absolute() else (root or Path.cwd()) / path)


def day_of(name: str) -> str:
    """The `YYYY-MM-DD` day a part belongs to."""
    m = PART_RE.match(name)
    if m is None:
        raise ValueError(f"not a traffic record: {name}")
    return m.group(1)
