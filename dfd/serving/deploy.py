"""`dfd deploy-model`: copy the registered model folder to a directory or an S3 prefix, with checksums, and prove it.

The copy carries `dfd-manifest.json`: the source (URI without credentials, name, version, alias, lineage tags) and
the SHA-256 of every file. It goes to `versions/<id>/` under the target (see `deploy_store` for the layout), is checked
as a private copy read back from the target (checksums, load, score the model's input example), and only then named
by the pointer, written last and signed with `$DFD_DEPLOY_KEY` (see `deploy_trust`). A failed check leaves the pointer
as it was and removes exactly the files it wrote. A target that holds anything dfd did not write is refused; the
last `--keep` versions stay. Nothing is ever loaded where it lies in the target: every check and every server loads
a private copy of the files the manifest lists, after the signature and the checksums.
"""

from __future__ import annotations

import contextlib
import json
import os
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
    copy_listed,
    new_pointer,
    open_store,
    read_pointer,
    safe_rel,
    version_copy,
    version_files,
    version_id,
)
from dfd.serving.deploy_trust import check_manifest, deploy_key, is_signed, sign, verify
from dfd.serving.registry_model import resolve_version

# Versions kept by default: the current one and two to roll back to by hand, without keeping every week forever.
KEEP = 3
__all__ = ["KEEP", "MANIFEST", "DeployError", "check", "check_deployment", "deploy_model", "migrate",
           "private_copy", "verify_checksums", "write_manifest"]


def sha256(path: Path) -> str:
    """The SHA-256 of a file, as the manifest records it."""
    return file_digest(path, "sha256")


def _files(folder: Path) -> list[Path]:
    """Every file under `folder` but its manifest; DeployError at a symbolic link (a deployment holds none)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if link := next((here / n for n in [*dirnames, *filenames] if (here / n).is_symlink()), None):
            raise DeployError(f"{folder} holds a symbolic link ({link.relative_to(folder).as_posix()}): a deployment "
                              "holds plain files only", "the deployment was altered: deploy again")
        out += [here / n for n in filenames]
    return sorted(p for p in out if p.relative_to(folder).as_posix() != MANIFEST)


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
    if path.is_symlink() or not path.is_file():
        raise DeployError(f"no {MANIFEST} in {folder}: not a complete deployment")
    try:
        manifest = json.loads(path.read_text())
        expected: dict[str, str] = manifest["files"]
        assert isinstance(expected, dict)
    except Exception:
        raise DeployError(f"{path} is not a dfd manifest") from None
    for rel in expected:
        safe_rel(rel, folder)
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
    """Checksums, then load and score: the manifest with the health check's scores.

    `folder` must be a private copy (nobody else can write it): it is loaded, which runs the model's code.
    """
    manifest = verify_checksums(folder)
    return {**manifest, "health_check": {"scores": health_check(folder)}}


def _download_model(uri: str, tracking_uri: str, dest: Path) -> dict[str, Any]:
    """The registered model's folder into `dest`; returns its source record (what, which version, lineage)."""
    import mlflow.artifacts

    from dfd.platform.tracking import fluent_uris

    name, version, alias, tags = resolve_version(uri, tracking_uri)
    # MLflow resolves a `models:/` artifact URI through the process-wide registry URI whatever registry_uri says:
    # set for the download only, or it reads whichever store the last fluent call (or the working folder) names.
    with fluent_uris(tracking_uri):
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest),
                                            tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return {"uri": uri, "name": name, "version": version, "alias": alias,
            "tags": {k: strip_credentials(str(v)) for k, v in tags.items()}, "tracking_uri": safe_uri(tracking_uri)}


def _with_version(store: Store, local: Path, manifest: dict[str, Any], scratch: Path,
                  on_file: OnFile | None) -> tuple[str, dict[str, Any], bytes]:
    """Put `local` in `store` as a version unless it is already there, and check a private copy read back from it.

    Returns its id, the check's result and the manifest's bytes as stored (what the pointer's signature covers); on
    any failure, removes exactly the files this call wrote.
    """
    vid = version_id(manifest["files"])
    written: list[str] = []
    try:
        if not store.has_version(vid):  # the same files deploy to the same id: never rewritten once there
            store.put_version(local, vid, written, on_file)
        back = scratch / "back"
        version_copy(store, vid, back)
        result = check(back)
        if version_id(result["files"]) != vid:
            raise DeployError(f"{store.where}: version {vid} holds a different file list than its id says")
        raw = (back / MANIFEST).read_bytes()
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is what the user needs to see
            store.delete(written)
        raise
    return vid, result, raw


def _point(store: Store, vid: str, source: dict[str, Any], keep: int, manifest_raw: bytes, key: bytes) -> list[str]:
    """Write the signed pointer naming `vid` (last), then remove versions beyond `keep`; the ids removed."""
    old = read_pointer(store)["history"] if store.read(POINTER) is not None else []
    history = [vid, *(v for v in old if v != vid)]
    store.write_pointer(sign(new_pointer(vid, history[:keep], source), manifest_raw, key))
    for gone in history[keep:]:
        store.delete(version_files(store, gone))  # only what its own manifest lists
    return history[keep:]


def _source(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("uri", "name", "version", "alias")}


def deploy_model(uri: str, tracking_uri: str, to: str, storage: StorageParams, keep: int = KEEP,
                 on_file: OnFile | None = None, key: bytes | None = None) -> dict[str, Any]:
    """Copy the model `uri` to `to` (a folder or s3://bucket/prefix) as a new version, checked, and point at it.

    Args:
        uri: The registered model (`models:/name@alias` or `models:/name/N`).
        tracking_uri: The registry.
        to: The target: empty, or an earlier deployment in this layout.
        storage: S3 settings (endpoint, retries).
        keep: Versions kept, the new one included (older ones are removed file by file).
        on_file: Called after each file of a new version is written (tests pause a deploy there).
        key: The signing key (default: `$DFD_DEPLOY_KEY`).

    Returns:
        The manifest with the health check's scores, `version_id` and `removed` (version ids pruned).

    Raises:
        DeployError: No signing key, the target is not ours or is in the old layout, or the check failed (the
            pointer is unchanged).
        StorageError: S3 is unreachable or refuses the write (after the client's bounded retries).
    """
    if keep < 1:
        raise DeployError(f"--keep {keep}: at least the current version must be kept")
    key = key or deploy_key()
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
        vid, result, raw = _with_version(store, local, manifest, Path(tmp), on_file)
        removed = _point(store, vid, _source(source), keep, raw, key)
    return {**result, "version_id": vid, "removed": removed}


def migrate(to: str, storage: StorageParams, key: bytes | None = None) -> dict[str, Any]:
    """Bring an older deployment at `to` into this layout, signed.

    An old single-folder deployment is copied to `versions/<id>/`, checked, pointed at by a signed pointer, and then
    its old files are removed (only those its manifest lists). An unsigned deployment in this layout (written before
    dfd signed them) is checked and its pointer signed. Either way what is there is trusted as it is: check where
    it came from first.

    Raises:
        DeployError: Nothing to migrate (already signed; or not a deployment), signed with another key, or the copy
            fails its check (then nothing is changed).
    """
    key = key or deploy_key()
    store = open_store(to, storage)
    kind = store.kind()
    if kind == "deployment":
        return _sign_unsigned(store, key)
    if kind != "legacy":
        raise DeployError(f"{store.where} is not a deployment in the old layout: nothing to migrate")
    with tempfile.TemporaryDirectory(prefix="dfd-migrate-") as tmp:
        local = Path(tmp) / "old"
        copy_listed(store, "", local)  # the manifest and what it lists, each path checked: nothing else
        old = verify_checksums(local)
        vid, result, raw = _with_version(store, local, old, Path(tmp), None)
        store.write_pointer(sign(new_pointer(vid, [vid], _source(old["source"])), raw, key))
        store.delete([*old["files"], MANIFEST])  # keys `verify_checksums` passed through `safe_rel`
    return {**result, "version_id": vid, "removed": []}


def _sign_unsigned(store: Store, key: bytes) -> dict[str, Any]:
    """Check the current version of an unsigned deployment from a private copy, then sign its pointer."""
    pointer = read_pointer(store)
    if is_signed(pointer):
        verify(pointer, key, store.where)  # signed with another key: say so rather than "nothing to do"
        raise DeployError(f"{store.where} is signed already: nothing to migrate")
    vid = pointer["current"]
    with tempfile.TemporaryDirectory(prefix="dfd-migrate-") as tmp:
        copy = Path(tmp) / "copy"
        version_copy(store, vid, copy)
        result = check(copy)
        if version_id(result["files"]) != vid:
            raise DeployError(f"{store.where}: version {vid} holds a different file list than its id says")
        store.write_pointer(sign(new_pointer(vid, pointer["history"], pointer.get("source", {})),
                                 (copy / MANIFEST).read_bytes(), key))
    return {**result, "version_id": vid, "removed": []}


def _signed(pointer: dict[str, Any], where: str, allow_unsigned: bool, key: bytes | None) -> bool:
    """Whether the pointer's signature was checked (and held); DeployError when it must be and does not hold."""
    if allow_unsigned and not is_signed(pointer):
        return False
    key = key or deploy_key(required=not allow_unsigned)
    if key is None:  # --allow-unsigned without a key: nothing to check the signature with
        return False
    verify(pointer, key, where)
    return True


def private_copy(location: str, storage: StorageParams, dest: Path, allow_unsigned: bool = False,
                 key: bytes | None = None) -> dict[str, Any]:
    """Copy the current version of the deployment at `location` (folder or s3://) into `dest` after checking the
    pointer's signature, then check the copy's files against its manifest, the manifest against the signed pointer,
    and the id against the file list: what is loaded is what was signed, out of reach of later writes.

    Args:
        allow_unsigned: Accept a pointer without a signature (a deployment from before dfd signed them).
        key: The signing key (default: `$DFD_DEPLOY_KEY`).

    Returns:
        The manifest, with `version_id` and `signed` (whether a signature was checked).

    Raises:
        DeployError: Not a deployment, unsigned (unless allowed), a signature that does not hold, or a copy that
            does not match its manifest.
    """
    store = open_store(location, storage)
    pointer = read_pointer(store)
    signed = _signed(pointer, store.where, allow_unsigned, key)
    vid = pointer["current"]
    version_copy(store, vid, dest)
    manifest = verify_checksums(dest)
    if version_id(manifest["files"]) != vid:
        raise DeployError(f"{location}: the manifest of version {vid} lists other files than the pointer names",
                          "the deployment was altered: deploy again")
    if signed:
        check_manifest(pointer, (dest / MANIFEST).read_bytes(), store.where)
    return {**manifest, "version_id": vid, "signed": signed}


def check_deployment(location: str, storage: StorageParams, allow_unsigned: bool = False,
                     key: bytes | None = None) -> dict[str, Any]:
    """Verify an existing deployment (folder or s3://): signature, checksums, then load and score a private copy.

    A folder that is itself one version (a `versions/<id>/`) or an old-layout deployment carries no signature: it
    is checked only with `allow_unsigned`.
    """
    with tempfile.TemporaryDirectory(prefix="dfd-check-") as tmp:
        copy = Path(tmp) / "copy"
        store = open_store(location, storage)
        if store.kind() == "legacy":
            if not allow_unsigned:
                raise DeployError(f"{store.where} is one version or an old-layout deployment: it carries no "
                                  "signature, so loading it could run anyone's code",
                                  "verify the deployment's root (its pointer is signed), migrate it with --migrate, "
                                  "or pass --allow-unsigned")
            copy_listed(store, "", copy)
            return check(copy)
        manifest = private_copy(location, storage, copy, allow_unsigned, key)
        return {**manifest, "health_check": {"scores": health_check(copy)}}
