"""Where `dfd deploy-model` keeps deployments: a folder or an S3 prefix holding versions and a pointer.

Layout under the target (a folder `T` or `s3://bucket/prefix`):

    versions/<id>/            one deployment: a plain MLflow model folder plus `dfd-manifest.json` (SHA-256 of each
                              file); `<id>` is a hash of that file list, so the same model deploys to the same place
    dfd-deployment.json       the pointer, written last, in one atomic write: the current `<id>` and the kept history
    current -> versions/<id>  folders only: a relative symlink swapped atomically (`mlflow models serve -m T/current`)

Every path a manifest names passes `safe_rel` before anything is read, copied or deleted by it, and every version id
and `current` must match `VERSION_ID`: a tampered manifest or pointer cannot reach outside its version.

A reader that reads the pointer and then the version it names sees one complete deployment, old or new, never a mix:
a version's files are written before the pointer names them and are never rewritten after. The product deletes only
what it wrote: files a version's own manifest lists (when pruning past `--keep`), or the files of an old-layout
deployment it has just migrated; anything else under or beside the target is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from dfd.platform.config import StorageParams
from dfd.platform.errors import DfdError
from dfd.platform.storage import parse_s3_uri, s3_client

MANIFEST = "dfd-manifest.json"
POINTER = "dfd-deployment.json"
VERSIONS = "versions"
CURRENT = "current"
FORMAT = "dfd-deployment/1"
VERSION_ID = re.compile(r"[0-9a-f]{16}")  # what `version_id` makes: nothing else names a version

Kind = Literal["empty", "deployment", "legacy"]
OnFile = Callable[[str], None]  # called after each file of a new version is written (tests pause a deploy there)


class DeployError(DfdError):
    """The copied model is incomplete, altered, or does not load and score; or the target is not ours to write."""


def version_id(files: dict[str, str]) -> str:
    """The id of a deployment: a hash of its (relative path, SHA-256) list; the same files give the same id."""
    lines = "".join(f"{rel}\t{digest}\n" for rel, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def check_version_id(vid: object, where: str) -> str:
    """`vid` when it is a version id as `version_id` makes them (16 hex digits); DeployError otherwise.

    An id becomes a path (`versions/<id>/`): `..`, an empty string or a slash must never get that far.
    """
    if not isinstance(vid, str) or not VERSION_ID.fullmatch(vid):
        raise DeployError(f"{where} names version {str(vid)[:40]!r}, which is not a dfd version id",
                          "the deployment was altered: deploy again")
    return vid


def safe_rel(rel: object, root: Path | None = None) -> str:
    """`rel` when it is a safe relative path for a manifest entry; DeployError otherwise.

    Safe: a non-empty `/`-separated relative path with no empty, `.` or `..` part, no backslash, no drive letter and
    no NUL. With `root`, also: no part of `root/rel` below `root` is a symbolic link, and it resolves under `root`.
    The one check for every manifest path the product reads, copies, verifies or deletes by.
    """
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if (not isinstance(rel, str) or "\\" in rel or "\0" in rel or re.match(r"[A-Za-z]:", rel)
            or any(p in ("", ".", "..") for p in parts)):
        raise DeployError(f"unsafe path in a deployment manifest: {str(rel)[:120]!r}",
                          "the deployment was altered: deploy again")
    if root is not None:
        path = root
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise DeployError(f"{root} holds a symbolic link at {rel!r}: a deployment holds plain files only",
                                  "the deployment was altered: deploy again")
        if not path.resolve().is_relative_to(root.resolve()):
            raise DeployError(f"{rel!r} resolves outside {root}", "the deployment was altered: deploy again")
    return rel


def manifest_files(raw: bytes | None, where: str) -> list[str]:
    """The file paths a manifest lists (each through `safe_rel`); DeployError when it is missing or not one."""
    if raw is None:
        raise DeployError(f"no {MANIFEST} at {where}: not a complete deployment")
    try:
        files = json.loads(raw)["files"]
        assert isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
    except Exception:
        raise DeployError(f"{where}/{MANIFEST} is not a dfd manifest") from None
    return [safe_rel(rel) for rel in files]


def new_pointer(current: str, history: Iterable[str], source: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "current": current, "path": f"{VERSIONS}/{current}", "history": list(history),
            "source": source, "updated_unix": int(time.time())}


def _refusal(where: str, kind: str, sample: list[str]) -> DeployError:
    if kind == "legacy":
        return DeployError(f"{where} holds a deployment in the old single-folder layout",
                           f"run `dfd deploy-model --to {where} --migrate` first (it keeps that deployment as "
                           f"{VERSIONS}/<id>/ and points at it), then deploy again")
    return DeployError(f"{where} holds {', '.join(sample[:3])}{' ...' if len(sample) > 3 else ''}, which dfd did not "
                       "write: refusing to deploy there", "choose an empty target or an earlier dfd deployment")


class FolderStore:
    """A deployment target on the local filesystem."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        self.where = str(self.root)

    def kind(self) -> Kind:
        """What the target holds now; raises DeployError when it is not ours to write."""
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise DeployError(f"{self.root} is not a folder", "choose an empty or new folder")
        if not self.root.exists():
            return "empty"
        if (self.root / POINTER).is_file():
            return "deployment"
        if (self.root / MANIFEST).is_file():
            return "legacy"
        # Only `versions/` (an interrupted first deploy of ours) counts as empty: nothing in it is named yet.
        if entries := sorted(p.name for p in self.root.iterdir() if p.name != VERSIONS):
            raise _refusal(self.where, "other", entries)
        return "empty"

    def read(self, rel: str) -> bytes | None:
        path = self.root / safe_rel(rel, self.root)
        return path.read_bytes() if path.is_file() else None

    def fetch(self, rel: str, dest: Path) -> None:
        """Copy the plain file `rel` (no symbolic link on its way) to `dest`."""
        path = self.root / safe_rel(rel, self.root)
        if not path.is_file():
            raise DeployError(f"{self.where} is missing {rel}: not a complete deployment")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest, follow_symlinks=False)

    def write_pointer(self, pointer: dict[str, Any]) -> None:
        """The pointer by an atomic rename, then the `current` symlink by an atomic rename: never a moment without
        a target."""
        tmp = self.root / f".{POINTER}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(pointer, indent=2, sort_keys=True))
        os.replace(tmp, self.root / POINTER)
        link = self.root / f".{CURRENT}.{uuid.uuid4().hex[:8]}"
        os.symlink(pointer["path"], link)  # relative: the target folder can move
        os.replace(link, self.root / CURRENT)

    def has_version(self, vid: str) -> bool:
        return self.read(f"{VERSIONS}/{check_version_id(vid, self.where)}/{MANIFEST}") is not None

    def put_version(self, local: Path, vid: str, written: list[str], on_file: OnFile | None) -> None:
        """Copy `local` in as version `vid`, staged beside and renamed in whole (`written`: the relative paths, once
        in place)."""
        staged = self.root / VERSIONS / f".staging-{uuid.uuid4().hex[:8]}"
        done = []
        try:
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                rel = path.relative_to(local).as_posix()
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staged / rel)
                done.append(rel)
                if on_file:
                    on_file(rel)
            staged.rename(self.root / VERSIONS / vid)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)  # the staging folder is ours alone
            raise
        written += [f"{VERSIONS}/{vid}/{rel}" for rel in done]

    def delete(self, rels: Iterable[str]) -> None:
        """Delete exactly these files, then the folders they leave empty (never anything else)."""
        dirs = set()
        for rel in rels:
            # A manifest names the files; a tampered one (`/etc/x`, `../x`, a symlinked folder) must not reach out.
            try:
                path = self.root / safe_rel(rel, self.root)
            except DeployError:
                continue
            if path.is_file() and not path.is_symlink():
                path.unlink()
                dirs.update(path.parents)
        for d in sorted((d for d in dirs if d != self.root and self.root in d.parents), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):  # not empty: it holds something we did not write
                d.rmdir()


class S3Store:
    """A deployment target under an S3 prefix (never a bucket's root)."""

    def __init__(self, uri: str, cfg: StorageParams) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        if not self.prefix:
            raise DeployError(f"refusing to deploy to the root of bucket {self.bucket}",
                              f"name a prefix, e.g. s3://{self.bucket}/models/deepfake-ensemble")
        self.where, self.cfg = f"s3://{self.bucket}/{self.prefix}", cfg
        self.client = s3_client(cfg)

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def _client_errors(self) -> tuple[type[Exception], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return BotoCoreError, ClientError

    def kind(self) -> Kind:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/", PaginationConfig={"MaxItems": 1000})
        keys = [o["Key"][len(self.prefix) + 1:] for page in pages for o in page.get("Contents", [])]
        if POINTER in keys:
            return "deployment"
        if MANIFEST in keys:
            return "legacy"
        # Only `versions/` (an interrupted first deploy of ours) counts as empty: nothing in it is named yet.
        if others := sorted(k for k in keys if not k.startswith(f"{VERSIONS}/")):
            raise _refusal(self.where, "other", others)
        return "empty"

    def read(self, rel: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(safe_rel(rel)))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write_pointer(self, pointer: dict[str, Any]) -> None:
        # One PUT: S3 makes an object visible whole, so a reader gets the old pointer or the new one.
        self.client.put_object(Bucket=self.bucket, Key=self._key(POINTER), ContentType="application/json",
                               Body=json.dumps(pointer, indent=2, sort_keys=True).encode())

    def has_version(self, vid: str) -> bool:
        return self.read(f"{VERSIONS}/{check_version_id(vid, self.where)}/{MANIFEST}") is not None

    def fetch(self, rel: str, dest: Path) -> None:
        """Download the object `rel` to `dest`."""
        from botocore.exceptions import BotoCoreError, ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(safe_rel(rel)), str(dest))
        except (BotoCoreError, ClientError) as exc:
            raise DeployError(f"{self.where} is missing {rel} or refuses it ({type(exc).__name__})",
                              "not a complete deployment") from None

    def put_version(self, local: Path, vid: str, written: list[str], on_file: OnFile | None) -> None:
        """Upload `local` as version `vid`, its manifest last; `written` grows key by key, so that a caller can
        remove exactly those when the upload fails half-way."""
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == MANIFEST, str(p)))
        for path in files:
            rel = f"{VERSIONS}/{vid}/{path.relative_to(local).as_posix()}"
            self.client.upload_file(str(path), self.bucket, self._key(rel))
            written.append(rel)
            if on_file:
                on_file(rel)

    def delete(self, rels: Iterable[str]) -> None:
        keys = [{"Key": self._key(safe_rel(rel))} for rel in rels]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000]})


Store = FolderStore | S3Store


def open_store(to: str, cfg: StorageParams) -> Store:
    """The store for a folder path or an s3:// URI."""
    return S3Store(to, cfg) if to.startswith("s3://") else FolderStore(to)


def read_pointer(store: Store) -> dict[str, Any]:
    """The target's pointer, checked for shape.

    Raises:
        DeployError: No pointer (not a deployment in this layout) or an unreadable one.
    """
    raw = store.read(POINTER)
    if raw is None:
        raise DeployError(f"no {POINTER} at {store.where}: not a dfd deployment",
                          f"deploy there with `dfd deploy-model --to {store.where}`")
    try:
        pointer = json.loads(raw)
        assert pointer["format"] == FORMAT and isinstance(pointer["history"], list)
    except Exception:
        raise DeployError(f"{store.where}/{POINTER} is not a dfd deployment pointer") from None
    for vid in [pointer["current"], *pointer["history"]]:
        check_version_id(vid, f"{store.where}/{POINTER}")
    return pointer


def copy_listed(store: Store, folder: str, dest: Path) -> dict[str, Any]:
    """Copy the manifest at `folder` (relative to the target; "" for its root) and exactly the files it lists into
    `dest`, each path through `safe_rel`: nothing outside the version, no symbolic link, nothing unlisted.

    Returns:
        The manifest as copied (unchecked: `verify_checksums` on `dest` checks the files against it).
    """
    base = f"{folder}/" if folder else ""
    raw = store.read(f"{base}{MANIFEST}")
    files = manifest_files(raw, f"{store.where}/{folder}".rstrip("/"))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).write_bytes(raw or b"")
    for rel in files:
        store.fetch(f"{base}{rel}", dest / rel)
    return json.loads(raw or b"{}")


def version_copy(store: Store, vid: str, dest: Path) -> dict[str, Any]:
    """Version `vid`'s manifest and files, copied into `dest` (a private copy: later writes to the target cannot
    reach what is checked and loaded there)."""
    return copy_listed(store, f"{VERSIONS}/{check_version_id(vid, store.where)}", dest)


def version_files(store: Store, vid: str) -> list[str]:
    """The relative paths (under the target) that version `vid` consists of, from its own manifest; [] when its
    manifest is missing, unreadable or names an unsafe path (then nothing of it is deleted)."""
    try:
        base = f"{VERSIONS}/{check_version_id(vid, store.where)}"
        files = manifest_files(store.read(f"{base}/{MANIFEST}"), f"{store.where}/{base}")
    except DeployError:  # a missing, unreadable or tampered manifest: delete none of it
        return []
    return [f"{base}/{rel}" for rel in files] + [f"{base}/{MANIFEST}"]
