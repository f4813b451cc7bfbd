"""`dfd deploy-model`: copy the registered model folder to a directory or an S3 prefix, with checksums, and prove it.

The copy carries `dfd-manifest.json`: the source (URI, name, version, alias, lineage tags) and the SHA-256 of every
file. A deployment is written to a temporary place, checked there (checksums, load, score the model's input
example), and only then made visible:
- a folder: written beside the target and renamed onto it (the previous deployment is replaced whole);
- S3: uploaded to a staging prefix, downloaded back and checked, copied server-side to the target prefix with the
  manifest written last (readers treat a prefix without a manifest as incomplete), then the staging prefix is removed.
A failed check leaves the target as it was and removes what was staged.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from dfd.platform.config import StorageParams
from dfd.platform.errors import DfdError
from dfd.platform.files import file_digest
from dfd.platform.storage import check_writable, download_dir, parse_s3_uri, s3_client, upload_dir
from dfd.serving.registry_model import resolve_version

MANIFEST = "dfd-manifest.json"


class DeployError(DfdError):
    """The copied model is incomplete, altered, or does not load and score."""


def sha256(path: Path) -> str:
    """The SHA-256 of a file, as the manifest records it."""
    return file_digest(path, "sha256")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, source: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file of `folder` and write the manifest into it."""
    manifest = {"source": source, "created_unix": int(time.time()),
                "files": {p.relative_to(folder).as_posix(): sha256(p) for p in _files(folder)}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_checksums(folder: Path) -> dict[str, Any]:
    """The manifest, after checking that the folder holds exactly its files with their checksums.

    Raises:
        DeployError: No manifest, a missing or extra file, or a checksum mismatch (a tampered or corrupt file).
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise DeployError(f"no {MANIFEST} in {folder}: not a complete deployment")
    manifest = json.loads(path.read_text())
    expected: dict[str, str] = manifest["files"]
    present = {p.relative_to(folder).as_posix() for p in _files(folder)}
    if missing := sorted(set(expected) - present):
        raise DeployError(f"deployment {folder} is missing {len(missing)} file(s): {', '.join(missing[:5])}")
    if extra := sorted(present - set(expected)):
        raise DeployError(f"deployment {folder} holds file(s) not in its manifest: {', '.join(extra[:5])}")
    if bad := [f for f, digest in expected.items() if sha256(folder / f) != digest]:
        raise DeployError(f"checksum mismatch in {folder}: {', '.join(bad[:5])}", "the copy was altered or corrupted")
    return manifest


def health_check(folder: Path) -> list[float]:
    """Load the model from `folder` and score its stored input example; the scores, or DeployError."""
    import mlflow.pyfunc
    from mlflow.models import Model

    try:
        model = mlflow.pyfunc.load_model(str(folder))
        example = Model.load(str(folder)).load_input_example(str(folder))
        if example is None:
            raise ValueError("the model has no stored input example")
        scores = np.asarray(model.predict(np.asarray(example, dtype=np.uint8)), dtype=float)
    except DeployError:
        raise
    except Exception as exc:
        raise DeployError(f"the model copied to {folder} does not load and score: {type(exc).__name__}: {exc}"
                          ) from None
    if scores.ndim != 1 or not np.isfinite(scores).all() or ((scores < 0) | (scores > 1)).any():
        raise DeployError(f"the model copied to {folder} scored its input example as {scores.tolist()}")
    return scores.round(6).tolist()


def check(folder: Path) -> dict[str, Any]:
    """Checksums, then load and score: the manifest with the health check's scores."""
    manifest = verify_checksums(folder)
    return {**manifest, "health_check": {"scores": health_check(folder)}}


def _download_model(uri: str, tracking_uri: str, dest: Path) -> dict[str, Any]:
    """The registered model's folder into `dest`; returns its source record (what, which version, lineage)."""
    import mlflow.artifacts

    name, version, alias, tags = resolve_version(uri, tracking_uri)
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest),
                                        tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return {"uri": uri, "name": name, "version": version, "alias": alias, "tags": tags, "tracking_uri": tracking_uri}


def _commit_folder(staged: Path, target: Path) -> None:
    """Put `staged` at `target` by renames (same filesystem), replacing a previous deployment whole."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        if not (target / MANIFEST).is_file() and any(target.iterdir()):
            raise DeployError(f"{target} exists and is not a dfd deployment", "choose an empty or new folder")
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _s3_delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def _commit_s3(staging: str, target: str, manifest: dict[str, Any], cfg: StorageParams) -> None:
    """Copy the staged objects to `target` server-side (manifest last), drop stale ones, remove the staging prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(cfg)
    sb, sp = parse_s3_uri(staging)
    tb, tp = parse_s3_uri(target)

    def key(prefix: str, rel: str) -> str:
        return f"{prefix}/{rel}".lstrip("/")

    try:
        for rel in [*sorted(manifest["files"]), MANIFEST]:
            client.copy_object(Bucket=tb, Key=key(tp, rel), CopySource={"Bucket": sb, "Key": key(sp, rel)})
        keep = {key(tp, rel) for rel in [*manifest["files"], MANIFEST]}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=tb, Prefix=f"{tp}/" if tp else ""):
            stale = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["Key"] not in keep
                     and not o["Key"].startswith(f"{sp}/")]
            if stale:
                client.delete_objects(Bucket=tb, Delete={"Objects": stale})
        _s3_delete_prefix(client, sb, sp)
    except (BotoCoreError, ClientError) as exc:
        raise DeployError(f"committing the deployment to {target} failed ({type(exc).__name__}: {exc})") from None


def deploy_model(uri: str, tracking_uri: str, to: str, storage: StorageParams) -> dict[str, Any]:
    """Copy the model `uri` to `to` (a folder or s3://bucket/prefix), checked; returns the manifest and the scores.

    Raises:
        DeployError: The check failed (the target is left as it was).
        StorageError: S3 is unreachable or refuses the write (after the client's bounded retries).
    """
    if to.startswith("s3://"):
        check_writable(to, storage)  # fail in seconds on a wrong endpoint, before downloading anything
    with tempfile.TemporaryDirectory(prefix="dfd-deploy-") as tmp:
        local = Path(tmp) / "model"
        source = _download_model(uri, tracking_uri, local)
        manifest = write_manifest(local, source)
        if not to.startswith("s3://"):
            target = Path(to).resolve()
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex[:8]}")
            shutil.copytree(local, staged)
            try:
                result = check(staged)  # checked where it will live, not in the temp copy
                _commit_folder(staged, target)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            return result
        bucket, prefix = parse_s3_uri(to)
        # A sibling prefix: invisible to readers of `to`, and removed whatever happens.
        staging = f"s3://{bucket}/{prefix or ''}.staging-{uuid.uuid4().hex[:8]}"
        try:
            upload_dir(local, staging, storage)
            back = Path(tmp) / "back"
            download_dir(staging, back, storage)
            result = check(back)
            _commit_s3(staging, to, manifest, storage)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is what the user needs to see
                _s3_delete_prefix(s3_client(storage), bucket, parse_s3_uri(staging)[1])
            raise
        return result


def check_deployment(location: str, storage: StorageParams) -> dict[str, Any]:
    """Verify an existing deployment (folder or s3://): checksums, load, score."""
    if not location.startswith("s3://"):
        return check(Path(location))
    with tempfile.TemporaryDirectory(prefix="dfd-check-") as tmp:
        download_dir(location, Path(tmp), storage)
        return check(Path(tmp))
