"""`dfd deploy-model`: copy the registered model folder to a directory or an S3 prefix, with checksums, and prove it.

The copy carries `dfd-manifest.json`: the source (URI without credentials, name, version, alias, lineage tags) and
the SHA-256 of every file. It goes to `versions/<id>/` under the target (see `deploy_store` for the layout), is checked
where it lives (checksums, load, score the model's input example; S3: downloaded back first), and only then named by
the pointer, written last. A failed check leaves the pointer as it was and removes exactly the files it wrote.
A target that holds anything dfd did not write is refused; the last `--keep` versions stay.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dfd.platform.config import StorageParams
from dfd.platform.files import file_digest
from dfd.platform.storage import check_writable
from dfd.platform.uris import safe_uri, strip_credentials
from dfd.serving.deploy_store import (
    MANIFEST,
    POINTER,
    DeployError,
    OnFile,
    Store,
    new_pointer,
    open_store,
    read_pointer,
    version_files,
    version_id,
)
from dfd.serving.registry_model import resolve_version

# Versions kept by default: the current one and two to roll back to by hand, without keeping every week forever.
KEEP = 3
__all__ = ["KEEP", "MANIFEST", "DeployError", "check", "check_deployment", "deploy_model", "migrate",
           "private_copy", "verify_checksums", "write_manifest"]


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
    return {"uri": uri, "name": name, "version": version, "alias": alias,
            "tags": {k: strip_credentials(str(v)) for k, v in tags.items()}, "tracking_uri": safe_uri(tracking_uri)}


def _with_version(store: Store, local: Path, manifest: dict[str, Any], scratch: Path,
                  on_file: OnFile | None) -> tuple[str, dict[str, Any]]:
    """Put `local` in `store` as a version unless it is already there, and check it where it lives.

    Returns its id and the check's result; on any failure, removes exactly the files this call wrote.
    """
    vid = version_id(manifest["files"])
    written: list[str] = []
    try:
        if not store.has_version(vid):  # the same files deploy to the same id: never rewritten once there
            store.put_version(local, vid, written, on_file)
        result = check(store.version_path(vid, scratch / "back"))
        if version_id(result["files"]) != vid:
            raise DeployError(f"{store.where}: version {vid} holds a different file list than its id says")
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is what the user needs to see
            store.delete(written)
        raise
    return vid, result


def _point(store: Store, vid: str, source: dict[str, Any], keep: int) -> list[str]:
    """Write the pointer naming `vid` (last), then remove versions beyond `keep`; the ids removed."""
    old = read_pointer(store)["history"] if store.read(POINTER) is not None else []
    history = [vid, *(v for v in old if v != vid)]
    store.write_pointer(new_pointer(vid, history[:keep], source))
    for gone in history[keep:]:
        store.delete(version_files(store, gone))  # only what its own manifest lists
    return history[keep:]


def deploy_model(uri: str, tracking_uri: str, to: str, storage: StorageParams, keep: int = KEEP,
                 on_file: OnFile | None = None) -> dict[str, Any]:
    """Copy the model `uri` to `to` (a folder or s3://bucket/prefix) as a new version, checked, and point at it.

    Args:
        uri: The registered model (`models:/name@alias` or `models:/name/N`).
        tracking_uri: The registry.
        to: The target: empty, or an earlier deployment in this layout.
        storage: S3 settings (endpoint, retries).
        keep: Versions kept, the new one included (older ones are removed file by file).
        on_file: Called after each file of a new version is written (tests pause a deploy there).

    Returns:
        The manifest with the health check's scores, `version_id` and `removed` (version ids pruned).

    Raises:
        DeployError: The target is not ours, is in the old layout, or the check failed (the pointer is unchanged).
        StorageError: S3 is unreachable or refuses the write (after the client's bounded retries).
    """
    if keep < 1:
        raise DeployError(f"--keep {keep}: at least the current version must be kept")
    if to.startswith("s3://"):
        open_store(to, storage)  # an empty prefix is refused before anything is written
        check_writable(to, storage)  # fail in seconds on a wrong endpoint, before downloading anything
    store = open_store(to, storage)
    if store.kind() == "legacy":
        raise DeployError(f"{store.where} holds a deployment in the old single-folder layout",
                          f"run `dfd deploy-model --to {store.where} --migrate` first, then deploy again")
    with tempfile.TemporaryDirectory(prefix="dfd-deploy-") as tmp:
        local = Path(tmp) / "model"
        source = _download_model(uri, tracking_uri, local)
        manifest = write_manifest(local, source)
        vid, result = _with_version(store, local, manifest, Path(tmp), on_file)
        removed = _point(store, vid, {k: source[k] for k in ("uri", "name", "version", "alias")}, keep)
    return {**result, "version_id": vid, "removed": removed}


def migrate(to: str, storage: StorageParams) -> dict[str, Any]:
    """Move an old single-folder deployment at `to` into this layout: copy it to `versions/<id>/`, check it, point
    at it, then remove the old copy's files (only those its manifest lists).

    Raises:
        DeployError: `to` is not an old-layout deployment, or the copy fails its check (then nothing is removed).
    """
    store = open_store(to, storage)
    if store.kind() != "legacy":
        raise DeployError(f"{store.where} is not a deployment in the old layout: nothing to migrate")
    with tempfile.TemporaryDirectory(prefix="dfd-migrate-") as tmp:
        local = Path(tmp) / "old"
        if to.startswith("s3://"):
            _download_legacy(to, local, storage)
        else:
            _copy_legacy(Path(store.where), local)
        old = verify_checksums(local)
        vid, result = _with_version(store, local, old, Path(tmp), None)
        store.write_pointer(new_pointer(vid, [vid], {k: old["source"].get(k) for k in ("uri", "name", "version",
                                                                                           "alias")}))
        store.delete([*old["files"], MANIFEST])
    return {**result, "version_id": vid, "removed": []}


def _download_legacy(to: str, dest: Path, storage: StorageParams) -> None:
    """The old deployment's files only (its manifest and what it lists), not anything else under the prefix."""
    from dfd.platform.storage import download_dir

    download_dir(to, dest, storage)
    manifest = json.loads((dest / MANIFEST).read_text())
    listed = {*manifest["files"], MANIFEST}
    for path in [p for p in dest.rglob("*") if p.is_file()]:
        if path.relative_to(dest).as_posix() not in listed:
            path.unlink()


def _copy_legacy(folder: Path, dest: Path) -> None:
    import shutil

    manifest = json.loads((folder / MANIFEST).read_text())
    for rel in [*manifest["files"], MANIFEST]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, dest / rel)


def private_copy(location: str, storage: StorageParams, dest: Path) -> dict[str, Any]:
    """Copy the deployment at `location` (folder or s3://) into `dest`, then check the copy's files against its
    SHA-256 manifest and the pointer's id: what is loaded is what was checked, out of reach of later writes.

    Returns:
        The manifest (with `version_id`).

    Raises:
        DeployError: Not a deployment, or the copy does not match its manifest.
    """
    store = open_store(location, storage)
    vid = read_pointer(store)["current"]
    store.version_copy(vid, dest)
    manifest = verify_checksums(dest)
    if version_id(manifest["files"]) != vid:
        raise DeployError(f"{location}: the manifest of version {vid} lists other files than the pointer names",
                          "the deployment was altered: deploy again")
    return {**manifest, "version_id": vid}


def check_deployment(location: str, storage: StorageParams) -> dict[str, Any]:
    """Verify an existing deployment (folder or s3://): its current version's checksums, load, score.

    A folder that is itself one version (a `versions/<id>/` or an old-layout deployment) is checked as it is.
    """
    with tempfile.TemporaryDirectory(prefix="dfd-check-") as tmp:
        if not location.startswith("s3://") and (Path(location) / MANIFEST).is_file():
            return check(Path(location))
        store = open_store(location, storage)
        if store.kind() == "legacy":
            from dfd.platform.storage import download_dir

            download_dir(location, Path(tmp), storage)
            return check(Path(tmp))
        vid = read_pointer(store)["current"]
        return {**check(store.version_path(vid, Path(tmp) / "back")), "version_id": vid}
