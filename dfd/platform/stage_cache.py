"""Stage fingerprints: skip a stage whose inputs are what they were when its outputs were written.

A stage's fingerprint covers what `dvc.yaml` declares for it: its params slice, the content of its input files and
folders, and the code it runs (its module and every project module that module imports, transitively). After a stage
runs, a record (fingerprint, the inputs in detail, the hashes of its outputs, its result) is written atomically to
`<artifacts>/.stages/<stage>.json`. Next time, when the fingerprint matches and the outputs are still as the stage
left them, the recorded result is returned without running the stage.

File contents are hashed once: md5s (and the ingest stage's media checks) are remembered by (path, size, mtime_ns,
inode) in `<artifacts>/.stages/hashes.json`, as DVC's state database does, so an unchanged run costs a `stat` per
file, not a read of the dataset.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dfd.platform.files import file_digest

R = TypeVar("R")
T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where the dfd, tasks, models and flows packages live
PROJECT_PACKAGES = ("dfd", "tasks", "models", "flows")
RECORD_DIR = ".stages"
MEMO_FILE = "hashes.json"


@dataclass(frozen=True)
class StageInputs:
    """What decides a stage's outputs.

    Attributes:
        name: The stage (`train@mesonet`).
        params: Its params slice (JSON-able).
        deps: Input files or folders.
        code: Modules it runs (`tasks.train`); their project imports are followed.
        outs: Output files or folders that must still be as the stage wrote them.
    """

    name: str
    params: dict[str, Any]
    deps: tuple[Path, ...]
    code: tuple[str, ...]
    outs: tuple[Path, ...] = ()


@dataclass
class Check:
    """The outcome of comparing a stage's inputs with its record."""

    name: str
    fingerprint: str
    inputs: dict[str, Any]
    result: Any = None  # the recorded result when up to date
    reason: str = ""  # why it must run
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def up_to_date(self) -> bool:
        return self.result is not None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one


class FileHasher:
    """What reading a file tells, remembered by (path, size, mtime_ns, inode) across runs: its md5, and the results
    of other probes of its content (ingest's media check), so that a new process re-reading an unchanged tree
    opens no file.

    A memo entry is `[size, mtime_ns, inode, md5 or None, {probe: result}]`; a file whose stamp changed loses its
    whole entry. One memo for every reader (stage fingerprints, ingest's md5s and media checks): one file to keep.
    """

    _lock = threading.Lock()

    def __init__(self, memo_path: Path | None = None) -> None:
        self.memo_path = memo_path
        self._memo: dict[str, list[Any]] = {}
        self._stats: dict[str, list[Any]] | None = None  # stamps taken in the current `batch()`
        if memo_path is not None and memo_path.is_file():
            try:
                self._memo = json.loads(memo_path.read_text())
            except (OSError, ValueError):  # a damaged memo only costs a re-read
                self._memo = {}

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Within the block, each file is stat'ed once however many lookups ask about it (ingest asks for its md5
        and for its media check): one pass over a dataset, not a cache that outlives it."""
        self._stats = {}
        try:
            yield
        finally:
            self._stats = None

    def _entry(self, path: str | Path) -> tuple[str, list[Any], list[Any] | None]:
        """(key, stamp, the remembered entry when its stamp still matches)."""
        # abspath, not resolve(): resolving costs an lstat per path component, per file, on every run.
        key = os.path.abspath(path)
        stats = self._stats
        stamp = stats.get(key) if stats is not None else None
        if stamp is None:
            st = os.stat(path)
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
            if stats is not None:
                stats[key] = stamp
        with self._lock:
            known = self._memo.get(key)
        return key, stamp, known if known is not None and known[:3] == stamp else None

    def _store(self, key: str, stamp: list[Any], known: list[Any] | None, md5: str | None = None,
               probe: tuple[str, Any] | None = None) -> None:
        entry = known or [*stamp, None, {}]
        entry = [*entry[:4], dict(entry[4]) if len(entry) > 4 else {}]
        if md5 is not None:
            entry[3] = md5
        if probe is not None:
            entry[4][probe[0]] = probe[1]
        with self._lock:
            self._memo[key] = entry

    def file(self, path: str | Path) -> str:
        """md5 of a file (a str path spares building a Path per file on a rerun over 100,000 files)."""
        key, stamp, known = self._entry(path)
        if known is not None and known[3] is not None:
            return str(known[3])
        digest = file_digest(Path(path), "md5")
        self._store(key, stamp, known, md5=digest)
        return digest

    def known(self, path: str | Path, name: str) -> tuple[bool, Any]:
        """(True, the remembered result of probe `name`) while the file is unchanged, else (False, None)."""
        try:
            _, _, entry = self._entry(path)
        except OSError:
            return False, None
        if entry is not None and len(entry) > 4 and name in entry[4]:
            return True, entry[4][name]
        return False, None

    def probe(self, path: Path, name: str, compute: Callable[[Path], T]) -> T:
        """`compute(path)` (JSON-able), remembered under `name` while the file is unchanged; a file that cannot
        be stat'ed is computed every time (the probe reports it)."""
        try:
            key, stamp, known = self._entry(path)
        except OSError:
            return compute(path)
        if known is not None and len(known) > 4 and name in known[4]:
            return typing.cast(T, known[4][name])
        value = compute(path)
        self._store(key, stamp, known, probe=(name, value))
        return value

    def path(self, path: Path) -> str | None:
        """md5 of a file; for a folder, md5 of its sorted (relative path, md5) listing; None when missing."""
        if path.is_file():
            return self.file(path)
        if not path.is_dir():
            return None
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = [[p.relative_to(path).as_posix(), self.file(p)] for p in files]
        return hashlib.md5(json.dumps(listing).encode()).hexdigest() + ".dir"

    def save(self) -> None:
        if self.memo_path is None:
            return
        with self._lock:
            text = json.dumps(self._memo)
        _write_atomic(self.memo_path, text)


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Module names imported by the file of `module` (relative imports resolved; `from p import m` gives p and p.m)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def code_files(modules: Iterable[str], root: Path = PROJECT_ROOT,
               packages: tuple[str, ...] = PROJECT_PACKAGES) -> list[Path]:
    """The project source files that running `modules` executes: each module, its packages' `__init__.py`, and
    every project module they import, transitively (third-party imports are not followed)."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in packages:
            continue
        path = _module_file(name, root)
        if path is None:  # `from pkg import function`: not a module
            continue
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b
        todo.extend(_imports(path, name))
    return sorted(set(seen.values()))


def code_hash(modules: Iterable[str], hasher: FileHasher, root: Path = PROJECT_ROOT,
              packages: tuple[str, ...] = PROJECT_PACKAGES) -> str:
    """One hash of the source files `code_files` finds (paths relative to `root`)."""
    listing = [[p.relative_to(root).as_posix(), hasher.file(p)] for p in code_files(modules, root, packages)]
    return hashlib.md5(json.dumps(listing).encode()).hexdigest()


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path.resolve())


def _jsonable(value: Any, root: Path) -> Any:
    if isinstance(value, Path):
        return _rel(value, root)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, root) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def encode_result(result: Any, root: Path) -> dict[str, Any]:
    """A stage's result dataclass as JSON (paths relative to the project root, so a moved project still matches)."""
    return {f.name: _jsonable(getattr(result, f.name), root) for f in dataclasses.fields(result)}


def _is_path(hint: Any) -> bool:
    return hint is Path or Path in typing.get_args(hint)


def decode_result(cls: type[R], data: dict[str, Any], root: Path) -> R:
    """The dataclass `encode_result` wrote, with its Path fields made absolute again."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        v = data[f.name]
        values[f.name] = root / v if isinstance(v, str) and _is_path(hints[f.name]) else v
    return cls(**values)


def result_paths(result: Any) -> list[Path]:
    """The Path fields of a result dataclass: outputs that must still exist."""
    return [v for f in dataclasses.fields(result) if isinstance(v := getattr(result, f.name), Path)]


def _out_paths(result: Any, inputs: StageInputs) -> list[Path]:
    """What must be unchanged for a record to hold: the result's paths and the declared outs. A folder in the
    result is left to the declared outs when there are any: another stage may write beside them (evaluate's
    reports folder also receives the register stage's gate.json)."""
    paths = [p for p in result_paths(result) if not (inputs.outs and p.is_dir())]
    return [*paths, *inputs.outs]


_HASHERS: dict[Path, FileHasher] = {}
_HASHERS_LOCK = threading.Lock()


def shared_hasher(memo_path: Path) -> FileHasher:
    """One hasher per memo file in this process, so that parallel stages neither re-read nor overwrite each other."""
    with _HASHERS_LOCK:
        key = memo_path.resolve()
        if key not in _HASHERS:  # built once: loading a large memo is the cost this avoids
            _HASHERS[key] = FileHasher(memo_path)
        return _HASHERS[key]


def project_hasher(artifacts: Path) -> FileHasher:
    """The project's one memo of file contents, `<artifacts>/.stages/hashes.json` (what `StageCache` uses)."""
    return shared_hasher(artifacts / RECORD_DIR / MEMO_FILE)


class StageCache:
    """Records of the stages of one project, under `<artifacts>/.stages/`."""

    def __init__(self, artifacts: Path, root: Path) -> None:
        self.dir = artifacts / RECORD_DIR
        self.root = root.resolve()
        self.hasher = shared_hasher(self.dir / MEMO_FILE)

    def record_path(self, name: str) -> Path:
        return self.dir / f"{name.replace('@', '_at_').replace('/', '_')}.json"

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.record_path(name)
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def _outs(self, paths: Iterable[Path]) -> dict[str, str | None]:
        return {_rel(p, self.root): self.hasher.path(p) for p in sorted(set(paths))}

    def check(self, inputs: StageInputs, cls: type[R]) -> Check:
        """Fingerprint `inputs` and compare with the stage's record; the recorded result when up to date."""
        detail = {"params": _jsonable(inputs.params, self.root),
                  "deps": {_rel(p, self.root): self.hasher.path(p) for p in inputs.deps},
                  "code": code_hash(inputs.code, self.hasher)}
        fp = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:16]
        self.hasher.save()
        check = Check(inputs.name, fp, detail)
        rec = self.record(inputs.name)
        if rec is None:
            check.reason = "no record of a previous run"
            return check
        check.record = rec
        if rec.get("fingerprint") != fp:
            old = rec.get("inputs", {})
            changed = [k for k in ("params", "code") if old.get(k) != detail[k]]
            changed += [f"dep {d}" for d in sorted(set(detail["deps"]) | set(old.get("deps", {})))
                        if old.get("deps", {}).get(d) != detail["deps"].get(d)]
            check.reason = "changed: " + (", ".join(changed) or "fingerprint")
            return check
        try:
            result = decode_result(cls, rec["result"], self.root)
        except (KeyError, TypeError):  # the result type changed shape: run again
            check.reason = "record of another result type"
            return check
        outs = self._outs(_out_paths(result, inputs))
        if outs != rec.get("outs"):
            missing = [p for p, h in outs.items() if h is None]
            check.reason = f"outputs missing: {', '.join(missing)}" if missing else "outputs changed since"
            return check
        check.result = result
        return check

    def forget(self, name: str) -> None:
        """Drop a stage's record before it runs: a run that fails halfway must not leave an old record behind."""
        self.record_path(name).unlink(missing_ok=True)

    def save(self, check: Check, inputs: StageInputs, result: Any, run_id: str | None = None,
             duration_s: float | None = None) -> Path:
        """Record a finished stage (written last and atomically: a crash before this leaves the stage to rerun)."""
        rec = {"stage": check.name, "fingerprint": check.fingerprint, "inputs": check.inputs,
               "outs": self._outs(_out_paths(result, inputs)), "result": encode_result(result, self.root),
               "run_id": run_id, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "duration_s": duration_s}
        self.hasher.save()
        path = self.record_path(check.name)
        _write_atomic(path, json.dumps(rec, indent=1, default=str))
        return path
