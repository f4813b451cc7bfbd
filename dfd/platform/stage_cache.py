"""Stage fingerprints: skip a stage whose inputs are what they were when its outputs were written.

A stage's fingerprint covers what `dvc.yaml` declares for it: its params slice, the content of its input files and
folders, and the code it runs (its module and every project module that module imports, transitively). After a stage
runs, a record (fingerprint, the inputs in detail, the hashes of its outputs, its result) is written atomically to
`<artifacts>/.stages/<stage>.json`. Next time, when the fingerprint matches and the outputs are still as the stage
left them, the recorded result is returned without running the stage.

File contents are hashed once: md5s (and the ingest stage's media checks) are remembered by (path, size, mtime_ns,
inode) in `<artifacts>/.stages/hashes.sqlite` (`dfd.platform.file_memo`), as DVC's state database does, so an
unchanged run costs a `stat` per file, not a read of the dataset.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import threading
import time
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dfd.platform.file_memo import FileHasher

R = TypeVar("R")
T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where the dfd, tasks, models and flows packages live
PROJECT_PACKAGES = ("dfd", "tasks", "models", "flows")
RECORD_DIR = ".stages"
# One ast.parse at a time in this process: the flow checks the training stages from parallel task threads, and
# CPython 3.11 raised "SystemError: AST constructor recursion depth mismatch" there (a failed train@f3net attempt
# in the pipeline flow test, 2026-12-06), a known interpreter race.
_PARSE_LOCK = threading.Lock()
MEMO_FILE = "hashes.sqlite"


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


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Module names imported by the file of `module` (relative imports resolved; `from p import m` gives p and p.m)."""
    with _PARSE_LOCK:  # CPython 3.11's parser is not safe across threads (see _PARSE_LOCK)
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
               packages: tuple[str, ...] = PROJECT_PACKAGES, hasher: FileHasher | None = None) -> list[Path]:
    """The project source files that running `modules` executes: each module, its packages' `__init__.py`, and
    every project module they import, transitively (third-party imports are not followed). With `hasher`, each
    file's imports are remembered while it is unchanged (parsing ~100 modules is most of an unchanged check)."""
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
        if hasher is None:
            todo.extend(_imports(path, name))
        else:
            todo.extend(hasher.probe(path, f"imports/{name}", lambda p, n=name: sorted(_imports(p, n))))
    return sorted(set(seen.values()))


def code_hash(modules: Iterable[str], hasher: FileHasher, root: Path = PROJECT_ROOT,
              packages: tuple[str, ...] = PROJECT_PACKAGES) -> str:
    """One hash of the source files `code_files` finds (paths relative to `root`)."""
    for package in packages:  # one query for the memo rows of each package, not one per module
        hasher.preload(root / package)
    listing = [[p.relative_to(root).as_posix(), hasher.file(p)] for p in code_files(modules, root, packages, hasher)]
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
    """The project's one memo of file contents, `<artifacts>/.stages/hashes.sqlite` (what `StageCache` uses)."""
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


def run_cached(cache: StageCache, inputs: StageInputs, cls: type[R], compute: Callable[[], R],
               announce: Callable[[Check], None] | None = None, run_id: str | None = None,
               force: bool = False) -> tuple[R, Check]:
    """`compute()` unless the stage is up to date (then its recorded result); records the result when it ran.

    Args:
        cache: The project's stage records.
        inputs: What decides the stage's outputs.
        cls: The result's dataclass (to decode a recorded result).
        compute: Runs the stage.
        announce: Told the check's outcome before anything runs (the console line, the run's tags).
        run_id: The MLflow run the record names.
        force: Run even when up to date.
    """
    check = cache.check(inputs, cls)
    if force and check.up_to_date:
        check.result, check.reason = None, "forced (--force)"
    if announce is not None:
        announce(check)
    if check.up_to_date:
        cache.hasher.drop_walk()
        return check.result, check
    cache.forget(inputs.name)  # a run that fails halfway must not leave the old record beside new outputs
    start = time.perf_counter()
    try:
        result = compute()  # may reuse the check's walk of its dataset (`FileHasher.walk`)
    finally:
        cache.hasher.drop_walk()
    cache.save(check, inputs, result, run_id, round(time.perf_counter() - start, 3))
    return result, check


def describe(check: Check) -> str:
    """The console line for a stage's check: up to date since when, or running and why."""
    if check.up_to_date:
        return f"{check.name}: up to date (inputs unchanged since {check.record.get('finished_at', '?')}); not run"
    return f"{check.name}: running ({check.reason})"
