"""`dfd dataset get`: the publisher's tool run only when the user hands it over, then the layout unpacked and checked.

Nothing here downloads by itself. FF++'s own script (`--script`, run with the user's terminal so that its terms-of-use
prompt reaches them) and the Kaggle CLI (`--kaggle`) fetch; dfd checks free disk space before them, unpacks the
archives they (or a browser) left, checks the layout against the adapter and that no file the dataset lists is
missing, and validates the result as `dfd validate-dataset` does.

Archives are hostile input: a member that is absolute, climbs out with `..`, or is a link is refused; the space the
members declare is checked before a byte is written (a member never yields more than it declares); each file is
written beside its final name and renamed when whole, so an interrupted unpack resumes where it stopped.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from dfd.data.publishers import DFDC_KAGGLE_GB, GB, Publisher, ffpp_estimate
from dfd.platform.errors import DataError

#: The Kaggle competition the DFDC's files belong to (`kaggle competitions download -c`).
DFDC_COMPETITION = "deepfake-detection-challenge"
#: What the layouts' top folders are called: an archive whose members share one other top folder (Celeb-DF-v2/...)
#: is unpacked without it, so that these land directly under the root.
TOP_FOLDERS = {"celebdf": frozenset({"Celeb-real", "YouTube-real", "Celeb-synthesis"}),
               "dfdc": frozenset({"train_sample_videos", "test_videos"})}
#: Archives found in the root that are unpacked there (the DFDC's parts, or the competition's own zip).
ROOT_ARCHIVES = {"dfdc": ("deepfake-detection-challenge.zip", "train_sample_videos.zip", "dfdc_train_part_*.zip")}
PART_SUFFIX = ".dfd-part"


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (where free space is measured before the folder exists)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) `path`."""
    return shutil.disk_usage(_existing(path)).free


def used_bytes(root: Path) -> int:
    """Bytes of the files under `root` (links not followed): what a resumed download already has."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with_path = os.path.join(folder, name)
            if not os.path.islink(with_path):
                total += os.path.getsize(with_path)
    return total


def check_space(root: Path, need: float | None, what: str, min_free_gb: float | None = None) -> str:
    """Refuse to start when the disk cannot hold what is still to come; returns a line saying what was checked.

    Args:
        root: The download's folder (it may not exist yet).
        need: Bytes the whole download takes (None: not documented).
        what: What `need` covers, for the messages.
        min_free_gb: The user's own figure, instead of the estimate.
    """
    if min_free_gb is not None:
        need, what = min_free_gb * GB, f"--min-free-gb {min_free_gb:g}"
    if need is None:
        return f"free disk space not checked: no documented size for {what} (--min-free-gb N checks for N GB)"
    have = used_bytes(root) if root.is_dir() else 0
    remaining, free = max(0.0, need - have), free_bytes(root)
    if free < remaining:
        raise DataError(f"not enough free disk space at {_existing(root)}: {free / GB:.1f} GB free, about "
                        f"{remaining / GB:.1f} GB still needed for {what}",
                        "free some space or choose --to on a bigger disk (--min-free-gb overrides the estimate)")
    return (f"free disk space: {free / GB:.1f} GB, about {remaining / GB:.1f} GB still needed for {what}"
            + (f" ({have / GB:.1f} GB already there)" if have else ""))


def run_tool(cmd: list[str], tool: str, publisher: Publisher) -> None:
    """Run the publisher's tool with this terminal (its prompts and progress are the user's); a failure says how to
    resume."""
    print(f"running: {' '.join(cmd)}", flush=True)
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        raise DataError(f"{tool} exited with status {code}; nothing was checked",
                        f"fix what it printed above and rerun the same command: {publisher.resume}")


def ffpp_command(script: Path, root: Path, script_args: list[str]) -> list[str]:
    """FF++'s download script with the output folder first and the user's arguments after."""
    if not script.is_file():
        raise DataError(f"FF++ download script not found: {script}",
                        "pass the download-FaceForensics.py the authors emailed you a link to")
    if script_args and not script_args[0].startswith("-"):
        raise DataError(f"give the script's options only (got {script_args[0]!r} first)",
                        "dfd passes --to as the script's output path")
    return [sys.executable, str(script), str(root), *script_args]


def kaggle_command(root: Path) -> list[str]:
    """`kaggle competitions download -c deepfake-detection-challenge -p ROOT` with the `kaggle` on PATH."""
    exe = shutil.which("kaggle")
    if exe is None:
        raise DataError("`kaggle` is not on PATH", "pip install kaggle, and put your Kaggle API token where its "
                        "documentation says (https://github.com/Kaggle/kaggle-api)")
    return [exe, "competitions", "download", "-c", DFDC_COMPETITION, "-p", str(root)]


def estimate(publisher: Publisher, script_args: list[str], kaggle: bool) -> tuple[float | None, str]:
    """Bytes the requested download will take, and what that covers."""
    if publisher.name == "ffpp":
        return ffpp_estimate(script_args)
    if publisher.name == "dfdc" and kaggle:
        return DFDC_KAGGLE_GB * GB, f"the {DFDC_COMPETITION} competition files and their unpacked copy"
    return None, f"{publisher.name} (no download run by dfd)"


def _member_path(info: zipfile.ZipInfo, strip: str | None) -> PurePosixPath | None:
    """A member's path relative to the root, without `strip`; refuses what could land outside it."""
    name = info.filename.replace("\\", "/")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or ":" in rel.parts[0]:
        raise DataError(f"archive member {info.filename!r} would land outside the dataset folder",
                        "the archive is not the publisher's: download it again from the publisher")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"archive member {info.filename!r} is a link", "the archive is not the publisher's")
    if strip is not None:
        rel = PurePosixPath(*rel.parts[1:])
    return rel if rel.parts else None


def unpack(archive: Path, root: Path, top_folders: frozenset[str] = frozenset()) -> int:
    """Unpack a zip into `root`, skipping files already there with their full size; returns how many were written.

    When every member lies under one top folder that is not one of `top_folders`, that folder is left out.

    Raises:
        DataError: A truncated or corrupt archive (say: resume its download), a member that would escape `root`, or
            too little free space for what is still to unpack.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive} is not a complete zip archive ({exc})",
                        "its download was interrupted or damaged: rerun the download to resume it") from None
    with zf:
        files = [m for m in zf.infolist() if not m.is_dir()]
        tops = {PurePosixPath(m.filename.replace("\\", "/")).parts[0] for m in files}
        strip = next(iter(tops)) if len(tops) == 1 and not tops & top_folders and all(
            len(PurePosixPath(m.filename).parts) > 1 for m in files) else None
        todo = []
        for info in files:
            rel = _member_path(info, strip)
            if rel is None:
                continue
            target = root.joinpath(*rel.parts)
            if not (target.is_file() and target.stat().st_size == info.file_size):
                todo.append((info, target))
        need = sum(i.file_size for i, _ in todo)
        if need > free_bytes(root):
            raise DataError(f"not enough free disk space to unpack {archive.name}: {need / GB:.1f} GB to write, "
                            f"{free_bytes(root) / GB:.1f} GB free", "free some space, then rerun: unpacking resumes")
        for info, target in todo:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + PART_SUFFIX)
            try:
                with zf.open(info) as src, part.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                part.unlink(missing_ok=True)
                raise DataError(f"{archive.name}: {info.filename} does not unpack ({exc})",
                                "the archive is damaged or incomplete: rerun its download to resume it") from None
            os.replace(part, target)
    return len(todo)


def root_archives(publisher: Publisher, root: Path) -> list[Path]:
    """The archives in `root` that are unpacked there for this dataset (sorted)."""
    found: set[Path] = set()
    for pattern in ROOT_ARCHIVES.get(publisher.name, ()):
        found.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(found)


def leftover_parts(root: Path) -> list[Path]:
    """Partial files an interrupted download left: FF++'s script writes each video to a `tmp*` file (no extension)
    in its videos/ folder and renames it when whole."""
    return sorted(p for p in root.glob("**/videos/tmp*") if p.is_file() and not p.suffix)


def missing_listed(bad: Iterable[dict[str, str]]) -> list[str]:
    """Files the dataset's own listing names (metadata.json, List_of_testing_videos.txt) that are not there."""
    return [b["path"] for b in bad if "but missing" in b["reason"]]


def check_ffpp_compression(root: Path, compression: str) -> None:
    """A one-line error when FF++'s videos under `root` are at other compressions than the one to be read."""
    present = {p.parent.name for p in root.glob("*_sequences/*/*/videos") if p.is_dir()}
    if present and compression not in present:
        raise DataError(f"the FF++ videos at {root} are at {', '.join(sorted(present))}, not {compression} "
                        "(data.compression)", f"set data.compression: {sorted(present)[0]} in params.yaml, or "
                        f"download -c {compression}")
