"""S3 through boto3 against a real S3-compatible server on loopback (moto's server mode)."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from dfd.platform.config import StorageParams
from dfd.platform.errors import StorageError
from dfd.platform.storage import check_writable, download_dir, parse_s3_uri, upload_dir


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(StorageError, match="not an S3 URI"):
        parse_s3_uri("/local/path")


def test_round_trip_and_probe(s3_server: str, tmp_path: Path) -> None:
    cfg = StorageParams(endpoint_url=s3_server)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="roundtrip")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)))
    check_writable("s3://roundtrip/models", cfg)
    keys = upload_dir(src, "s3://roundtrip/models/v1", cfg)
    assert keys == ["models/v1/a.txt", "models/v1/sub/b.bin"]
    back = download_dir("s3://roundtrip/models/v1", tmp_path / "back", cfg)
    assert len(back) == 2
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    with pytest.raises(StorageError, match="NoSuchBucket"):
        check_writable("s3://missing-bucket/x", cfg)


def test_unreachable_endpoint_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("DFD_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    cfg = StorageParams(endpoint_url="http://127.0.0.1:9", max_attempts=2, connect_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot write to s3://b/p at http://127\.0\.0\.1:9") as err:
        check_writable("s3://b/p", cfg)
    assert time.monotonic() - start < 30  # bounded retries, not botocore's defaults
    assert "testing" not in str(err.value)
