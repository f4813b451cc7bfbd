"""The project's memo of file contents: what reading a file told, kept while the file is unchanged.

A file is "unchanged" while its stamp (size, mtime_ns, inode) is, as in DVC's state database. The memo keeps its
md5 and the results of other probes of its content (ingest's media check), and, for a whole folder, the digest of
its listing keyed by the stamps of every file in it: a new process re-hashing an unchanged tree of 100,000 files
then walks it once (a stat per file) and reads nothing.

Stored in SQLite (`<artifacts>/.stages/hashes.sqlite`): a run reads only the rows under the folder it walks and
writes only the rows it changed, in one transaction, so parallel stages and processes add to the memo instead of
overwriting each other, and a memo of millions of crops is never loaded or rewritten whole.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from dfd.platform.files import file_digest

T = TypeVar("T")
Stamp = tuple[int, int, int]  # size, mtime_ns, inode

log = logging.getLogger(__name__)
#: How long a folder's walk may be reused by the next reader of that folder (`FileHasher.walk`).
WALK_REUSE_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER,
                                  md5 TEXT, probes TEXT);
CREATE TABLE IF NOT EXISTS trees (path TEXT PRIMARY KEY, stamps TEXT, digest TEXT);
"""


def walk_files(root: str) -> list[tuple[str, str, Stamp]]:
    """(relative posix path, path, stamp) of every file under `root`, sorted by relative path.

    Like `Path.rglob`, symlinked files are listed (stamped by their target) and symlinked folders are not descended
    into; hidden files are listed. scandir on strings: a Path per file dominates a rerun over 100,000 files.
    """
    found: list[tuple[str, str, Stamp]] = []
    todo = [(root, "")]
    while todo:
        folder, prefix = todo.pop()
        with os.scandir(folder) as entries:
            for e in entries:
                rel = prefix + e.name
                if e.is_dir(follow_symlinks=False):
                    todo.append((e.path, rel + "/"))
                elif e.is_file():
                    st = e.stat()
                    found.append((rel, e.path, (st.st_size, st.st_mtime_ns, st.st_ino)))
    found.sort()
    return found


def _key(path: str | Path) -> str:
    """The memo's key of a path: absolute and normalised (abspath, not resolve(): resolving costs an lstat per
    path component, per file, on every run); a plain absolute str is taken as is (abspath is most of a lookup)."""
    if isinstance(path, str) and path.startswith(os.sep) and f"{os.sep}." not in path and os.sep * 2 not in path \
            and not path.endswith(os.sep):
        return path
    return os.path.abspath(path)


@functools.lru_cache(maxsize=4096)
def _parse_probes(text: str) -> dict[str, Any]:
    """Probe results from their JSON text; most files of a dataset share the same text (`{"media_check/1": null}`),
    so each is parsed once. The dict is shared: callers copy before changing it (`FileHasher._store`)."""
    return typing.cast(dict[str, Any], json.loads(text))


class FileHasher:
    """md5s and probe results of files, remembered by (path, size, mtime_ns, inode) across runs.

    A file whose stamp changed loses its whole entry. One memo for every reader (stage fingerprints, ingest's md5s
    and media checks): one file to keep. Without `memo_path` it remembers for the life of the object only.
    """

    _lock = threading.RLock()

    def __init__(self, memo_path: Path | None = None) -> None:
        self.memo_path = memo_path
        self._memo: dict[str, list[Any]] = {}  # absolute path -> [size, mtime_ns, inode, md5 | None, {probe: ...}]
        self._trees: dict[str, tuple[str, str]] = {}
        self._dirty: set[str] = set()
        self._dirty_trees: set[str] = set()
        self._loaded: set[str] = set()  # paths (files or folders) whose rows are all in `_memo`
        self._stats: dict[str, Stamp] | None = None  # stamps taken in the current `batch()`
        self._last_walk: tuple[str, float, list[tuple[str, str, Stamp]]] | None = None  # see `walk`
        self._last_listing: tuple[str, float, list[tuple[str, str, str, dict[str, Any]]]] | None = None

    # -- storage -------------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        """A connection per use (cheap), never shared across threads or forked processes; None when unusable."""
        if self.memo_path is None:
            return None
        try:
            self.memo_path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.memo_path, timeout=60)
            con.executescript(_SCHEMA)
            return con
        except sqlite3.DatabaseError as exc:  # a damaged memo costs a re-read, never a failed run
            log.warning("file memo %s unusable (%s): hashing without it", self.memo_path, exc)
            self.memo_path = None
            return None

    def preload(self, path: str | Path) -> None:
        """Bring the memo's rows of `path` and, when it is a folder, of every file under it, into memory (once)."""
        key = os.path.abspath(path)
        with self._lock:
            if self._is_loaded(key):
                return
            con = self._connect()
            if con is None:
                self._loaded.add(key)
                return
            try:
                # Paths under `key` sort between key + "/" and key + "0" ("0" is the character after "/").
                rows = con.execute("SELECT path, size, mtime_ns, ino, md5, probes FROM files WHERE path = ? OR "
                                   "(path >= ? AND path < ?)", (key, key + os.sep, key + chr(ord(os.sep) + 1)))
                for path, size, mtime, ino, md5, probes in rows:
                    if path not in self._memo:  # what this process learnt since wins
                        # probes stay JSON text until asked for (`_probes`): most reruns ask for few
                        self._memo[path] = [size, mtime, ino, md5, probes or {}]
                for path, stamps, digest in con.execute("SELECT path, stamps, digest FROM trees WHERE path = ? OR "
                                                        "(path >= ? AND path < ?)",
                                                        (key, key + os.sep, key + chr(ord(os.sep) + 1))):
                    self._trees.setdefault(path, (stamps, digest))
            except sqlite3.DatabaseError as exc:
                log.warning("file memo %s unreadable (%s): hashing without it", self.memo_path, exc)
                self.memo_path = None
            finally:
                con.close()
            self._loaded.add(key)

    def _tree(self, key: str) -> tuple[str, str] | None:
        """The remembered (stamps digest, digest) of folder `key`: one row, without the rows of its files."""
        if key not in self._trees and not self._is_loaded(key):
            con = self._connect()
            if con is not None:
                try:
                    row = con.execute("SELECT stamps, digest FROM trees WHERE path = ?", (key,)).fetchone()
                except sqlite3.DatabaseError:
                    row = None
                finally:
                    con.close()
                if row is not None:
                    self._trees[key] = (row[0], row[1])
        return self._trees.get(key)

    def _is_loaded(self, key: str) -> bool:
        while key not in self._loaded:
            parent = os.path.dirname(key)
            if parent == key:
                return False
            key = parent
        return True

    def save(self) -> None:
        """Write what changed since the last save, in one transaction (nothing when nothing changed)."""
        with self._lock:
            if not self._dirty and not self._dirty_trees:
                return
            files = [(k, *e[:4], (e[4] if isinstance(e[4], str) else json.dumps(e[4])) if e[4] else None)
                     for k in self._dirty if (e := self._memo.get(k)) is not None]
            trees = [(k, *self._trees[k]) for k in self._dirty_trees]
            con = self._connect()
            if con is None:
                return
            try:
                with con:
                    con.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", files)
                    con.executemany("INSERT OR REPLACE INTO trees VALUES (?, ?, ?)", trees)
                self._dirty.clear()
                self._dirty_trees.clear()
            except sqlite3.DatabaseError as exc:
                log.warning("file memo %s not written (%s): the next run hashes again", self.memo_path, exc)
            finally:
                con.close()

    # -- lookups -------------------------------------------------------------------------------------------------

    def walk(self, root: Path) -> list[tuple[str, str, Stamp]]:
        """`walk_files(abspath(root))`, or the walk `path(root)` took moments ago (a stage's check walks the dataset
        just before the stage reads it: one walk of 100,000 files, not two; and both see the same stamps)."""
        key = os.path.abspath(root)
        last, self._last_walk = self._last_walk, None
        if last is not None and last[0] == key and time.monotonic() - last[1] < WALK_REUSE_S:
            return last[2]
        return walk_files(key)

    def drop_walk(self) -> None:
        """Forget the last walk and listing (a folder of millions of crops is a large list to keep for nothing)."""
        self._last_walk = self._last_listing = None

    @contextlib.contextmanager
    def batch(self, root: Path | None = None) -> Iterator[None]:
        """Within the block, each file is stat'ed once however many lookups ask about it (ingest asks for its md5
        and for its media check); `root`'s rows are read from the memo in one query."""
        if root is not None:
            self.preload(root)
        self._stats = {}
        try:
            yield
        finally:
            self._stats = None

    def _entry(self, path: str | Path, stamp: Stamp | None = None) -> tuple[str, Stamp, list[Any] | None]:
        """(key, stamp, the remembered entry when its stamp still matches)."""
        key = _key(path)
        stats = self._stats
        if stamp is not None:
            if stats is not None:
                stats[key] = stamp
        else:
            stamp = stats.get(key) if stats is not None else None
            if stamp is None:
                st = os.stat(path)
                stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
                if stats is not None:
                    stats[key] = stamp
        if key not in self._memo:
            self.preload(key)
        known = self._memo.get(key)
        if known is not None and known[0] == stamp[0] and known[1] == stamp[1] and known[2] == stamp[2]:
            return key, stamp, known
        return key, stamp, None

    @staticmethod
    def _probes(entry: list[Any]) -> dict[str, Any]:
        if isinstance(entry[4], str):
            entry[4] = _parse_probes(entry[4])
        return typing.cast(dict[str, Any], entry[4])

    def _store(self, key: str, stamp: Stamp, known: list[Any] | None, md5: str | None = None,
               probe: tuple[str, Any] | None = None) -> None:
        entry = [*stamp, None, {}] if known is None else [*known[:4], dict(self._probes(known))]
        if md5 is not None:
            entry[3] = md5
        if probe is not None:
            entry[4][probe[0]] = probe[1]
        with self._lock:
            self._memo[key] = entry
            self._dirty.add(key)

    def file(self, path: str | Path, stamp: Stamp | None = None) -> str:
        """md5 of a file (`stamp`, when the caller just stat'ed it, spares a second stat)."""
        key, stamp, known = self._entry(path, stamp)
        if known is not None and known[3] is not None:
            return str(known[3])
        digest = file_digest(Path(path), "md5")
        self._store(key, stamp, known, md5=digest)
        return digest

    def known(self, path: str | Path, name: str, stamp: Stamp | None = None) -> tuple[bool, Any]:
        """(True, the remembered result of probe `name`) while the file is unchanged, else (False, None)."""
        try:
            _, _, entry = self._entry(path, stamp)
        except OSError:
            return False, None
        if entry is not None and name in (probes := self._probes(entry)):
            return True, probes[name]
        return False, None

    def probe(self, path: Path, name: str, compute: Callable[[Path], T]) -> T:
        """`compute(path)` (JSON-able), remembered under `name` while the file is unchanged; a file that cannot
        be stat'ed is computed every time (the probe reports it)."""
        try:
            key, stamp, known = self._entry(path)
        except OSError:
            return compute(path)
        if known is not None and name in (probes := self._probes(known)):
            return typing.cast(T, probes[name])
        value = compute(path)
        self._store(key, stamp, known, probe=(name, value))
        return value

    def listing(self, root: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(relative path, path, md5, remembered probe results) of every file under `root`, sorted.

        One walk (the stage check's, when it just took one), one memo lookup per file, a read only for the new or
        changed ones: what ingest needs of a dataset of 100,000 files, without asking the memo about each file
        once for its md5 and again for its media check.
        """
        key = os.path.abspath(root)
        last = self._last_listing
        self._last_listing = None
        if last is not None and last[0] == key and time.monotonic() - last[1] < WALK_REUSE_S:
            return last[2]
        self.preload(key)
        out = []
        memo = self._memo
        for rel, full, stamp in self.walk(root):
            e = memo.get(full)
            if e is None or e[3] is None or e[0] != stamp[0] or e[1] != stamp[1] or e[2] != stamp[2]:
                self.file(full, stamp)  # new or changed: read, and remembered
                e = memo[_key(full)]
            out.append((rel, full, e[3], self._probes(e)))
        return out

    def path(self, path: Path) -> str | None:
        """md5 of a file; for a folder, md5 of its sorted (relative path, md5) listing; None when missing.

        A folder whose files all have the stamps they had when it was last hashed gets its remembered digest
        without a lookup per file: one walk, a stat per file.
        """
        if path.is_file():
            return self.file(path)
        if not path.is_dir():
            return None
        key = os.path.abspath(path)
        files = walk_files(key)
        self._last_walk, self._last_listing = (key, time.monotonic(), files), None  # a listing of an older walk
        # NUL/newline-separated text (no file name holds a NUL): a JSON list per file costs a tenth of a second
        # per 20,000 files, twice per changed dataset.
        stamps = hashlib.md5("\n".join(f"{rel}\0{s[0]}\0{s[1]}\0{s[2]}" for rel, _, s in files).encode(
            "utf-8", "surrogateescape")).hexdigest()
        known = self._tree(key)
        if known is not None and known[0] == stamps:
            return known[1]
        listing = self.listing(path)  # some file changed: one lookup each (reused by the stage that runs next)
        self._last_listing = (key, time.monotonic(), listing)
        digest = hashlib.md5("\n".join(f"{rel}\0{md5}" for rel, _, md5, _ in listing).encode(
            "utf-8", "surrogateescape")).hexdigest() + ".dir"
        with self._lock:
            self._trees[key] = (stamps, digest)
            self._dirty_trees.add(key)
        return digest
