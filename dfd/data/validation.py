"""Dataset checks shared by the ingest stage and `dfd validate-dataset`.

Every candidate the adapter lists is checked (missing, outside the root, zero-byte, unreadable, corrupt), duplicate
contents are found from one md5 pass over the dataset (the same pass that gives its DVC hash), and the classes are
counted. Nothing here raises on a bad file: each becomes a row with its reason.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dfd.data.adapters import Candidate, get_adapter
from dfd.data.media import check_media
from dfd.data.provenance import dir_hash, file_md5s
from dfd.platform.config import DataParams
from dfd.platform.file_memo import FileHasher

#: The media check's name in the file memo (bump it when `check_media` changes what it finds).
MEDIA_PROBE = "media_check/2"  # 2: videos sniffed and opened under the allow-lists
#: Below this share of the minority class a dataset is reported as badly unbalanced.
MIN_CLASS_SHARE = 0.1


@dataclass
class ValidationResult:
    """What the checks found: usable candidates, bad ones with reasons, duplicates, and a summary."""

    root: Path
    adapter: str
    good: list[Candidate]
    bad: list[dict[str, str]]
    duplicates: list[list[str]]
    data_hash: str
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def classes(self) -> dict[str, int]:
        counts = Counter("fake" if c.label == 1 else "real" for c in self.good)
        return {"real": counts.get("real", 0), "fake": counts.get("fake", 0)}

    @property
    def bad_share(self) -> float:
        total = len(self.good) + len(self.bad)
        return len(self.bad) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        methods = Counter(c.method for c in self.good)
        return {"root": str(self.root), "adapter": self.adapter, "samples": len(self.good),
                "candidates": len(self.good) + len(self.bad), "bad": self.bad, "bad_share": self.bad_share,
                "classes": self.classes, "methods": dict(sorted(methods.items())), "duplicates": self.duplicates,
                "data_hash": self.data_hash, "warnings": self.warnings, "errors": self.errors}


def _check_media(root: Path, rels: list[str], workers: int, progress: bool, hasher: FileHasher | None,
                 remembered: dict[str, dict[str, Any]]) -> list[str | None]:
    """`check_media` of each file, from the memo when it is unchanged (no thread needed), else opened in threads.

    `remembered` holds the probe results the memo keeps for each unchanged file, by relative path.
    """
    known: dict[str, str | None] = {}
    for rel in rels:
        probes = remembered.get(rel)
        if probes is not None and MEDIA_PROBE in probes:
            known[rel] = probes[MEDIA_PROBE]
    todo = [rel for rel in rels if rel not in known]
    check = check_media if hasher is None else lambda p: hasher.probe(p, MEDIA_PROBE, check_media)
    with ThreadPoolExecutor(workers) as pool:
        opened = list(tqdm(pool.map(lambda rel: check(root / rel), todo), total=len(todo),
                           desc="checking media", unit="file", leave=False, disable=not progress or not todo))
    known.update(zip(todo, opened, strict=True))
    if hasher is not None:
        hasher.save()
    return [known[rel] for rel in rels]


def validate(root: Path, data: DataParams, workers: int = 4, progress: bool = True,
             hasher: FileHasher | None = None, real_only: bool = False) -> ValidationResult:
    """Check a dataset through its adapter.

    Args:
        root: Dataset root.
        data: Adapter name and options.
        workers: Threads that open media files (OpenCV decodes outside the GIL).
        progress: Show progress bars.
        hasher: The project's memo of file contents: md5s and media checks of files unchanged (path, size,
            mtime, inode) since they were last read come from it, and new ones go into it (saved at the end).
        real_only: Every model trains `train_on: real_only`, so a dataset without fakes is usable (said in a warning).

    Returns:
        The checks' result; `errors` is non-empty when the dataset must not be trained on as it is.
    """
    candidates = list(get_adapter(data.adapter)(root, data))
    to_check = [c for c in candidates if c.problem is None]
    with hasher.batch(root) if hasher is not None else contextlib.nullcontext():
        if hasher is not None:  # one walk and one memo lookup per file for both (the stage check's, when fresh)
            listing = hasher.listing(root)
            md5s = {rel: md5 for rel, _, md5, _ in listing}
            remembered = {rel: probes for rel, _, _, probes in listing}
        else:
            md5s, remembered = file_md5s(root), {}
        problems = _check_media(root, [c.rel_path for c in to_check], workers, progress, hasher, remembered)
    good: list[Candidate] = []
    bad = [{"path": c.rel_path, "reason": c.problem} for c in candidates if c.problem is not None]
    for cand, problem in zip(to_check, problems, strict=True):
        if problem:
            bad.append({"path": cand.rel_path, "reason": problem})
        else:
            good.append(cand)
    # Duplicate contents: keep the first copy, report the rest (a copy in two splits leaks the answer).
    by_md5: dict[str, list[Candidate]] = defaultdict(list)
    for cand in good:
        by_md5[md5s.get(cand.rel_path, cand.rel_path)].append(cand)
    duplicates = [[c.rel_path for c in group] for group in by_md5.values() if len(group) > 1]
    result = ValidationResult(root, data.adapter, [], bad, duplicates, dir_hash(root, md5s))
    if bad:
        result.errors.append(f"{len(bad)} unusable file(s): see 'bad' for the reasons")
    dropped = set()
    for group in by_md5.values():
        if len(group) > 1:
            if len({c.label for c in group}) > 1:
                result.errors.append(f"same content labelled both real and fake: {[c.rel_path for c in group]}")
            for dup in group[1:]:
                dropped.add(dup.rel_path)
                bad.append({"path": dup.rel_path, "reason": f"duplicate content of {group[0].rel_path}"})
    result.good = [c for c in good if c.rel_path not in dropped]
    classes = result.classes
    for name, n in classes.items():
        if n == 0 and name == "fake" and real_only and classes["real"]:
            result.warnings.append("no fake samples: accepted, every model trains real_only (SBI makes the fakes); "
                                   "the gate still needs real fakes (an evaluate.datasets entry)")
        elif n == 0:
            result.errors.append(f"no usable {name} samples" + (" (a dataset of reals only is usable when every "
                                 "model trains `train_on: real_only`)" if name == "fake" else ""))
    total = sum(classes.values())
    if total and min(classes.values()) and min(classes.values()) / total < MIN_CLASS_SHARE:
        result.warnings.append(f"badly unbalanced classes: {classes['real']} real vs {classes['fake']} fake")
    if duplicates:
        result.warnings.append(f"{len(duplicates)} group(s) of files with identical content")
    return result
