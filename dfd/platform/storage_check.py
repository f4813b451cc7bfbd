"""Preflight for S3: every bucket the run will write to is reachable and writable before any training starts.

The buckets in use: the DVC default remote when it is `s3://` (with its own `endpointurl`), the MLflow artifacts
destination when this machine knows it (`MLFLOW_ARTIFACTS_DESTINATION`, as `mlflow/start_server.sh` reads it), and
any `s3://` value in params. Each is probed with `storage.check_writable` (bounded retries and timeouts), so an
unreachable endpoint costs seconds and one line, not a crashed upload after hours of training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfd.platform.config import Params
from dfd.platform.storage import check_writable


@dataclass(frozen=True)
class Bucket:
    """An S3 location the run uses, what uses it, and the endpoint its user talks to (None: the default)."""

    uri: str
    use: str
    endpoint: str | None = None


def dvc_remote(root: Path) -> tuple[str, str, str | None] | None:
    """The DVC default remote of the repo at `root`: (name, url, endpointurl), or None without one.

    Reads `.dvc/config` and `.dvc/config.local` (the local file wins, as in DVC) without starting DVC.
    """
    from configobj import ConfigObj  # DVC's own config reader (a dependency of dvc)

    merged: dict[str, dict[str, Any]] = {}
    for name in ("config", "config.local"):
        path = root / ".dvc" / name
        if path.is_file():
            for section, values in ConfigObj(str(path), list_values=False).items():
                merged.setdefault(section, {}).update(values)
    default = merged.get("core", {}).get("remote")
    remote = merged.get(f'remote "{default}"') if default else None
    if not remote or "url" not in remote:
        return None
    return default, remote["url"], remote.get("endpointurl")


def _s3_values(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str) and value.startswith("s3://"):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _s3_values(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _s3_values(v, f"{where}[{i}]")


def buckets_in_use(params: Params, root: Path) -> list[Bucket]:
    """The S3 locations this project's run will use (deduplicated, in a stable order)."""
    found: list[Bucket] = []
    remote = dvc_remote(root)
    if remote and remote[1].startswith("s3://"):
        found.append(Bucket(remote[1], f"DVC remote '{remote[0]}'", remote[2]))
    dest = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if dest.startswith("s3://"):
        found.append(Bucket(dest, "MLflow artifacts destination", os.environ.get("MLFLOW_S3_ENDPOINT_URL")))
    found += [Bucket(uri, f"params {where}") for where, uri in _s3_values(params.model_dump(mode="json"), "")]
    seen: set[str] = set()
    return [b for b in found if not (b.uri in seen or seen.add(b.uri))]


def check_storage(params: Params, root: Path) -> list[Bucket]:
    """Probe every bucket in use; returns them when all are writable.

    Raises:
        StorageError: One line naming the first bucket that is unreachable, missing or read-only, and its user.
    """
    from dfd.platform.errors import StorageError

    buckets = buckets_in_use(params, root)
    for b in buckets:
        cfg = params.storage if b.endpoint is None else params.storage.model_copy(update={"endpoint_url": b.endpoint})
        try:
            check_writable(b.uri, cfg)
        except StorageError as exc:
            raise StorageError(f"{b.use}: {exc.message}", exc.hint) from None
    return buckets
