"""Dataset adapters: each turns a dataset root, in its publisher's layout, into candidate manifest rows.

An adapter only lists what the dataset says it holds; the ingest stage checks each file and splits by identity.
Adapters are chosen by name (`data.adapter` in params).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dfd.errors import DataError
from dfd.media import media_kind


@dataclass(frozen=True)
class Candidate:
    """One sample as the dataset describes it, before its file is checked."""

    rel_path: str
    label: int
    method: str
    identity: str
    problem: str | None = None  # set when the adapter already knows the sample is unusable


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def folder_adapter(root: Path) -> Iterator[Candidate]:
    """`real/` and `fake/` folders of images or videos, with an optional `metadata.json`.

    `metadata.json` maps a path relative to the root to `{"label": 0|1, "identity": ..., "method": ...,
    "source": ...}`; files it names but that are missing become bad rows. Without an identity, the file name up to
    its first underscore is used (so `id007_3.png` and `id007_id011_3.png` share identity `id007`).
    """
    meta_path = root / "metadata.json"
    meta: dict[str, dict[str, object]] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for cls, label in (("real", 0), ("fake", 1)):
        folder = root / cls
        if not folder.is_dir():
            raise DataError(f"class folder '{cls}/' not found in {root}", "the folder layout needs real/ and fake/")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"class folder '{cls}/' in {root} is empty", f"put {cls} images or videos in it")
        for path in files:
            rel = path.relative_to(root).as_posix()
            info = meta.get(rel, {})
            ident = str(info.get("identity") or path.stem.split("_")[0])
            method = str(info.get("method") or ("real" if label == 0 else "unknown"))
            lab = int(info.get("label", label))  # type: ignore[arg-type]
            problem = None
            if not _inside(root, path):
                problem = "path escapes the dataset root (symlink?)"
            elif media_kind(path) is None:
                problem = f"unsupported file type '{path.suffix}'"
            yield Candidate(rel, lab, method, ident, problem)
    seen = {p.relative_to(root).as_posix() for cls in ("real", "fake") for p in (root / cls).rglob("*")}
    for rel in sorted(set(meta) - seen):
        info = meta[rel]
        problem = ("path escapes the dataset root" if not _inside(root, root / rel)
                   else None if (root / rel).exists() else "named in metadata.json but missing")
        if problem:
            yield Candidate(rel, int(info.get("label", -1)), str(info.get("method", "unknown")),  # type: ignore[arg-type]
                            str(info.get("identity", Path(rel).stem.split("_")[0])), problem)


ADAPTERS: dict[str, Callable[[Path], Iterator[Candidate]]] = {"folder": folder_adapter}


def get_adapter(name: str) -> Callable[[Path], Iterator[Candidate]]:
    """An adapter by its params name."""
    if name not in ADAPTERS:
        raise DataError(f"unknown dataset adapter '{name}'", f"choose one of {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]
