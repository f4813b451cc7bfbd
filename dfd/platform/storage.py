"""S3 through boto3 (AWS, or an S3-compatible server such as MinIO): a client with bounded retries, and the few
operations the pipeline needs (check a bucket is writable, copy a folder up and down).

The endpoint comes from the environment (`DFD_S3_ENDPOINT_URL`, else `AWS_ENDPOINT_URL`) or `storage.endpoint_url`;
credentials only from the environment (or the usual AWS config files), never from params.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from dfd.platform.config import StorageParams
from dfd.platform.errors import StorageError

ENDPOINT_ENV = ("DFD_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> `("bucket", "some/prefix")` (prefix without surrounding slashes)."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise StorageError(f"not an S3 URI: {uri!r}", "write it as s3://bucket/prefix")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def endpoint_url(cfg: StorageParams) -> str | None:
    """The endpoint to use: the environment wins over params; None means AWS itself."""
    for name in ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return cfg.endpoint_url


def s3_client(cfg: StorageParams) -> Any:
    """A boto3 S3 client whose retries and timeouts are bounded by `cfg` (seconds, not minutes, when down)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                    connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
                    s3={"addressing_style": "path"})  # MinIO and moto serve buckets as paths, not subdomains
    return boto3.client("s3", endpoint_url=endpoint_url(cfg), region_name=cfg.region, config=config)


def _describe(exc: Exception) -> str:
    """What went wrong, without echoing credentials (botocore messages never include the secret key)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
    return f"{type(exc).__name__}: {exc}"


def check_writable(uri: str, cfg: StorageParams) -> None:
    """Write and delete a small probe object under `uri`; raise one clear line when that fails.

    Raises:
        StorageError: The endpoint is unreachable, the bucket is missing, or writing is refused.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    key = f"{prefix}/.dfd-probe-{uuid.uuid4().hex}".lstrip("/")
    client = s3_client(cfg)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"dfd")
        client.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        where = endpoint_url(cfg) or "AWS"
        raise StorageError(f"cannot write to {uri} at {where} ({_describe(exc)})",
                           "check storage.endpoint_url or DFD_S3_ENDPOINT_URL, the bucket and the credentials"
                           ) from None


def upload_dir(local: Path, uri: str, cfg: StorageParams) -> list[str]:
    """Copy every file under `local` to `uri`, keeping relative paths; returns the keys written."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(cfg)
    keys = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(local).as_posix()}".lstrip("/")
        try:
            client.upload_file(str(path), bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"upload of {path} to s3://{bucket}/{key} failed ({_describe(exc)})") from None
        keys.append(key)
    return keys


def download_dir(uri: str, local: Path, cfg: StorageParams) -> list[Path]:
    """Copy every object under `uri` into `local`, keeping relative paths; returns the files written."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(cfg)
    out = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix
                                                                     else ""):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):].lstrip("/") if prefix else obj["Key"]
                dest = local / rel
                if not dest.resolve().is_relative_to(local.resolve()):
                    raise StorageError(f"object key escapes the target folder: s3://{bucket}/{obj['Key']}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(dest))
                out.append(dest)
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"download of {uri} failed ({_describe(exc)})") from None
    if not out:
        raise StorageError(f"nothing found under {uri}", "check the bucket and prefix")
    return out
