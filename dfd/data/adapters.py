"""Dataset adapters: each turns a dataset root, in its publisher's layout, into candidate manifest rows.

An adapter only lists what the dataset says it holds (with the official split where the dataset has one) and which
persons each sample shows (`persons`: a real its person, a face swap its target and source; names are opaque and
never split, see `dfd.data.identity`); the ingest stage and `dfd validate-dataset` check each file and split the
rest by identity cluster. Chosen by name (`data.adapter` in params): folder, ffpp, celebdf, dfdc.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from dfd.data.media import VIDEO_EXTS, media_kind
from dfd.platform.config import DataParams
from dfd.platform.errors import DataError


class Candidate(NamedTuple):
    """One sample as the dataset describes it, before its file is checked (a tuple: one per file per rerun)."""

    rel_path: str
    label: int
    method: str
    identity: str
    problem: str | None = None  # set when the adapter already knows the sample is unusable
    split: str | None = None  # the dataset's official split, when it has one
    persons: tuple[str, ...] = ()  # the persons the sample shows; the identity clusters are built from them


Adapter = Callable[[Path, DataParams], Iterator[Candidate]]


def inside(root: Path, path: Path, rel: str | None = None) -> bool:
    """Whether `path`, with symlinks resolved, lies under `root` (or in the DVC cache that `root`'s links point to).

    Ingest asks this of every file on every run: a path below `root` (`rel`, when the caller knows it) with no
    symlink in its relative part is answered with an lstat per component, without resolving the whole path.
    """
    if rel is None:
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = None
    if rel is not None:
        parts = rel.split("/")
        base = os.fspath(root)
        if ".." not in parts and not any(os.path.islink(os.path.join(base, *parts[:i + 1]))
                                         for i in range(len(parts))):
            return True
    real, real_root = path.resolve(), root.resolve()
    if real.is_relative_to(real_root):
        return True
    # `dvc add` with a cache on another disk (cache.type symlink) leaves links into that cache: DVC's own files.
    cache = _dvc_cache(real_root)
    return cache is not None and real.is_relative_to(cache)


@functools.lru_cache(maxsize=16)
def _dvc_cache(root: Path) -> Path | None:
    """The cache folder of the DVC repo holding `root`, or None (no DVC, or no repo)."""
    try:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
    except ImportError:
        return None
    try:
        with Repo(Repo.find_root(str(root))) as repo:
            return Path(repo.cache.local.path).resolve()
    except (DvcException, OSError):
        return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _stem(path: str) -> str:
    """`Path(path).stem` of a str path, without a Path or splitext (once per file on every rerun)."""
    name = path.rpartition(os.sep)[2]
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def _files(root: Path, folder: Path, exts: frozenset[str] | None = None) -> list[tuple[str, str, bool]]:
    """Files under `folder` (not hidden), sorted: (path, its posix path relative to `root`, whether it is known to
    lie inside `root` without resolving it).

    scandir on strings: pathlib and an lstat per path component, per file, dominate a rerun over 100,000 files.
    The walk does not descend into symlinked folders, so a file that is no symlink itself, below a `folder` with
    no symlink between it and `root`, lies inside `root`; any other file is resolved by `inside`.
    """
    found: list[tuple[str, bool]] = []
    todo = [os.fspath(folder)] if folder.is_dir() else []  # a missing folder holds no file, as with rglob
    while todo:
        with os.scandir(todo.pop()) as entries:  # an entry knows if it is a plain file or a link without a stat
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                elif not e.name.startswith(".") and (exts is None or os.path.splitext(e.name)[1].lower() in exts) \
                        and e.is_file():
                    found.append((e.path, not e.is_symlink()))
    found.sort()
    base = os.fspath(root) + os.sep
    folder_plain = os.fspath(folder).startswith(base) and inside(root, folder)
    return [(full, full[len(base):].replace(os.sep, "/"), plain and folder_plain) if full.startswith(base)
            else (full, Path(full).relative_to(root).as_posix(), False) for full, plain in found]


def _candidate(root: Path, path: str | Path, label: int, method: str, identity: str, split: str | None = None,
               rel: str | None = None, plain: bool = False, persons: tuple[str, ...] = ()) -> Candidate:
    """A candidate row; `rel` and `plain` when `_files` already knows them (see there); `persons` (default: the
    identity, as one name) is what the identity clusters are built from."""
    if rel is None:
        rel = Path(path).relative_to(root).as_posix()
    problem = None
    if not plain and not inside(root, Path(path), rel):
        problem = "path escapes the dataset root (symlink?)"
    elif media_kind(rel) is None:
        problem = f"unsupported file type '{Path(path).suffix}'"
    return Candidate(rel, label, method, identity, problem, split, persons or (identity,))


def _listed_but_missing(root: Path, rel: str, label: int, method: str, identity: str,
                        source: str = "metadata.json") -> Candidate | None:
    """A bad row for a file the dataset's own metadata names, when it is missing or outside the root."""
    path = root / rel
    if not inside(root, path):
        return Candidate(rel, label, method, identity, "path escapes the dataset root")
    if not path.exists():
        return Candidate(rel, label, method, identity, f"named in {source} but missing")
    return None


def folder_adapter(root: Path, data: DataParams) -> Iterator[Candidate]:
    """`real/` and `fake/` folders of images or videos, with an optional `metadata.json`.

    `metadata.json` maps a path relative to the root to `{"label": 0|1, "identity": ..., "method": ...,
    "source": ...}`; files it names but that are missing become bad rows. The sample's persons are its `identity`
    and, for a fake, its `source` (the person whose face was pasted in), each taken whole. Without an identity, the
    file name up to its first underscore is the person (the layout's naming rule: `id007_3.png` and
    `id007_id011_3.png` both show `id007`; give `identity` and `source` in metadata.json to say more).
    """
    meta_path = root / "metadata.json"
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected an object mapping file paths to their labels")
    seen = set()
    for cls, label in (("real", 0), ("fake", 1)):
        folder = root / cls
        if cls == "fake" and not any(folder.iterdir() if folder.is_dir() else ()):
            # A dataset of reals only (real-only models, SBI): the class count decides (dfd/data/validation.py).
            continue
        if not folder.is_dir():
            raise DataError(f"class folder '{cls}/' not found in {root}", "the folder layout needs real/ and fake/")
        files = _files(root, folder)
        if not files:
            raise DataError(f"class folder '{cls}/' in {root} is empty", f"put {cls} images or videos in it")
        for path, rel, plain in files:
            seen.add(rel)
            info = meta.get(rel, {})
            ident = str(info.get("identity") or _stem(path).split("_")[0])
            method = str(info.get("method") or ("real" if label == 0 else "unknown"))
            source = info.get("source")
            persons = (ident, str(source)) if source else (ident,)
            yield _candidate(root, path, int(info.get("label", label)), method, ident, None, rel, plain, persons)
    for rel in sorted(set(meta) - seen):
        info = meta[rel]
        bad = _listed_but_missing(root, rel, int(info.get("label", -1)), str(info.get("method", "unknown")),
                                  str(info.get("identity", Path(rel).stem.split("_")[0])))
        if bad:
            yield bad


def _ffpp_splits(root: Path, data: DataParams) -> dict[str, str]:
    """Official FF++ splits: each id of a `[target, source]` pair maps to the pair's split."""
    folder = Path(data.splits_dir) if data.splits_dir else root / "splits"
    out: dict[str, str] = {}
    for split in ("train", "val", "test"):
        path = folder / f"{split}.json"
        if path.is_file():
            for pair in _read_json(path):  # type: ignore[union-attr]
                for vid in pair:
                    out[str(vid)] = split
    return out


def ffpp_adapter(root: Path, data: DataParams) -> Iterator[Candidate]:
    """FaceForensics++: `original_sequences/{youtube,actors}/<c>/videos/*.mp4` (real) and
    `manipulated_sequences/<method>/<c>/videos/<target>_<source>.mp4` (fake), at compression `data.compression`,
    for the methods in `data.methods` (all when None). The official identity splits are used when found.

    A fake shows its target and its source (`<target>_<source>.mp4`: FF++'s file naming rule), an original its
    own id: a fake is in one identity cluster with both originals. Its `identity` label is the pair written
    `min_max`; a missing original (e.g. `750.mp4`) simply leaves its fake with the other people of its cluster.
    """
    orig, manip = root / "original_sequences", root / "manipulated_sequences"
    if not orig.is_dir() and not manip.is_dir():
        raise DataError(f"{root} does not look like FaceForensics++ (no original_sequences/ nor "
                        "manipulated_sequences/)", "check data.root, or choose another data.adapter")
    splits = _ffpp_splits(root, data)
    pair_of: dict[str, str] = {}
    fakes = []
    for method_dir in sorted(p for p in manip.iterdir() if p.is_dir()) if manip.is_dir() else []:
        if data.methods and method_dir.name not in data.methods:
            continue
        for path, rel, plain in _files(root, method_dir / data.compression / "videos", VIDEO_EXTS):
            ids = _stem(path).split("_")
            if len(ids) != 2:
                yield Candidate(rel, 1, method_dir.name, _stem(path), "file name is not <target>_<source>")
                continue
            pair = "_".join(sorted(ids))
            pair_of.setdefault(ids[0], pair)
            pair_of.setdefault(ids[1], pair)
            fakes.append((path, rel, plain, method_dir.name, pair, splits.get(ids[0]), (ids[0], ids[1])))
    for source in sorted(p for p in orig.iterdir() if p.is_dir()) if orig.is_dir() else []:
        for path, rel, plain in _files(root, source / data.compression / "videos", VIDEO_EXTS):
            vid = _stem(path)
            yield _candidate(root, path, 0, "original", pair_of.get(vid, vid), splits.get(vid), rel, plain, (vid,))
    for path, rel, plain, method, pair, split, persons in fakes:
        yield _candidate(root, path, 1, method, pair, split, rel, plain, persons)


def celebdf_adapter(root: Path, data: DataParams) -> Iterator[Candidate]:
    """Celeb-DF v2: `Celeb-real/`, `YouTube-real/`, `Celeb-synthesis/`, and `List_of_testing_videos.txt`.

    The test list (`<label> <path>` per line, where Celeb-DF writes 1 for real and 0 for fake) is the official
    test split; the rest is split by identity cluster. Celeb-DF names its files `id<A>_<n>` (a real of celebrity
    A) and `id<A>_id<B>_<n>` (a swap between A and B): a fake shows both A and B; a YouTube video shows one
    unnamed person, its own (`yt<name>`). A file name of another shape is one person, taken whole.
    """
    folders = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
    if not any((root / f).is_dir() for f in folders):
        raise DataError(f"{root} does not look like Celeb-DF (no Celeb-real/, YouTube-real/, Celeb-synthesis/)",
                        "check data.root, or choose another data.adapter")
    test: dict[str, int] = {}
    listing = root / "List_of_testing_videos.txt"
    if listing.is_file():
        for n, line in enumerate(listing.read_text().splitlines(), 1):
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("0", "1"):
                test[parts[1]] = 1 - int(parts[0])  # Celeb-DF's 1 means real
            elif line.strip():
                raise DataError(f"{listing}:{n}: expected '<0|1> <path>', got {line.strip()!r}")
    seen = set()
    for folder, label in folders.items():
        for path, rel, plain in _files(root, root / folder, VIDEO_EXTS):
            seen.add(rel)
            persons = _celebdf_persons(_stem(path)) if folder != "YouTube-real" else (f"yt{_stem(path)}",)
            method = "real" if label == 0 else "celeb-synthesis"
            yield _candidate(root, path, label, method, persons[0], "test" if rel in test else None, rel, plain,
                             persons)
    for rel in sorted(set(test) - seen):
        bad = _listed_but_missing(root, rel, test[rel], "unknown", Path(rel).stem.split("_")[0],
                                  "List_of_testing_videos.txt")
        if bad:
            yield bad


_CELEBDF_NAME = re.compile(r"(id\d+)(?:_(id\d+))?_\d+")


def _celebdf_persons(stem: str) -> tuple[str, ...]:
    """`id0_0003` -> (id0,); `id0_id16_0003` -> (id0, id16); any other name -> itself, whole."""
    m = _CELEBDF_NAME.fullmatch(stem)
    return tuple(p for p in m.groups() if p) if m else (stem,)


def dfdc_adapter(root: Path, data: DataParams) -> Iterator[Candidate]:
    """DFDC: `dfdc_train_part_*/metadata.json` mapping `x.mp4` to `{"label": "FAKE"|"REAL", "original": ...}`, and
    the competition's own sample `train_sample_videos/` (same metadata.json; what `kaggle competitions download`
    fetches).

    DFDC publishes no person ids (its actors appear in many original videos, unnamed): the finest person a sample
    can be tied to is its original video, so a sample's person is its original's name (a real is its own
    original). A fake and its original are one cluster; two originals of the same actor are two clusters, which
    the data cannot reveal (the intervals then treat them as independent: docs/concepts/identity-splits.md).
    """
    parts = sorted(p for p in root.glob("dfdc_train_part_*") if p.is_dir())
    parts += [p for p in (root / "train_sample_videos",) if p.is_dir()]
    if not parts:
        raise DataError(f"{root} does not look like DFDC (no dfdc_train_part_*/ nor train_sample_videos/ folders)",
                        "check data.root, or choose another data.adapter")
    for part in parts:
        meta_path = part / "metadata.json"
        if not meta_path.is_file():
            raise DataError(f"{meta_path} not found", "each DFDC part ships a metadata.json")
        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            raise DataError(f"{meta_path}: expected an object mapping video names to their labels")
        for name, info in sorted(meta.items()):
            label = 1 if str(info.get("label", "")).upper() == "FAKE" else 0
            original = info.get("original") or name
            ident = f"{part.name}/{Path(str(original)).stem}"
            rel = f"{part.name}/{name}"
            bad = _listed_but_missing(root, rel, label, "dfdc" if label else "real", ident)
            # The original's name alone (not its part): DFDC's names are unique, and a fake filed in another part
            # than its original must still join it.
            yield bad or _candidate(root, root / rel, label, "dfdc" if label else "real", ident,
                                    persons=(Path(str(original)).stem,))


ADAPTERS: dict[str, Adapter] = {"folder": folder_adapter, "ffpp": ffpp_adapter, "celebdf": celebdf_adapter,
                                "dfdc": dfdc_adapter}


def get_adapter(name: str) -> Adapter:
    """An adapter by its params name."""
    if name not in ADAPTERS:
        raise DataError(f"unknown dataset adapter '{name}'", f"choose one of {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]
