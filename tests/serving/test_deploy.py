"""`dfd deploy-model`: to a folder and to a real S3-compatible server (moto), checked, and tamper-evident."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from dfd.cli import main
from dfd.platform.config import StorageParams
from dfd.platform.errors import StorageError
from dfd.serving.deploy import MANIFEST, DeployError, check_deployment, deploy_model


def test_deploy_to_folder_and_tamper(registered, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(registered.root)
    target = tmp_path / "deployed" / "model"
    assert main(["--params", str(registered.root / "extra.yaml"), "deploy-model", "--to", str(target)]) == 0
    assert "health check passed" in capsys.readouterr().out
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["source"]["version"] == registered.version and manifest["source"]["tags"]
    assert "MLmodel" in manifest["files"] and any(f.endswith("best.pt") for f in manifest["files"])
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert check_deployment(str(target), StorageParams())["health_check"]["scores"]
    # One flipped byte in a checkpoint fails the check, by name.
    ckpt = next(target.rglob("best.pt"))
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(DeployError, match="checksum mismatch"):
        check_deployment(str(target), StorageParams())
    assert main(["deploy-model", "--to", str(target), "--verify"]) == 2


def test_failed_check_leaves_target_untouched(registered, tmp_path: Path, monkeypatch) -> None:
    import dfd.serving.deploy as deploy

    target = tmp_path / "model"
    deploy_model(registered.uri, registered.tracking_uri, str(target), StorageParams())
    before = (target / MANIFEST).read_text()

    def broken(folder: Path) -> list[float]:
        raise DeployError(f"the model copied to {folder} does not load")

    monkeypatch.setattr(deploy, "health_check", broken)
    with pytest.raises(DeployError):
        deploy_model(registered.uri, registered.tracking_uri, str(target), StorageParams())
    assert (target / MANIFEST).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_deploy_to_s3_and_back(registered, s3_server: str, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="models")
    cfg = StorageParams(endpoint_url=s3_server, max_attempts=2)
    out = deploy_model(registered.uri, registered.tracking_uri, "s3://models/prod/ensemble", cfg)
    assert out["health_check"]["scores"] and out["source"]["version"] == registered.version
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="models")["Contents"]]
    assert f"prod/ensemble/{MANIFEST}" in keys and not [k for k in keys if ".staging-" in k]
    assert check_deployment("s3://models/prod/ensemble", cfg)["files"] == out["files"]
    key = next(k for k in keys if k.endswith("MLmodel"))
    client.put_object(Bucket="models", Key=key, Body=b"tampered")
    with pytest.raises(DeployError, match="checksum mismatch"):
        check_deployment("s3://models/prod/ensemble", cfg)


def test_unreachable_s3_fails_clearly(registered) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once released: nothing listens there
    cfg = StorageParams(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=1.0)
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        deploy_model(registered.uri, registered.tracking_uri, "s3://models/x", cfg)
