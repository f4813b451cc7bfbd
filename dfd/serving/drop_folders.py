"""Files named by a JSON path list (`serve.path_roots`), read without a race: opened once, copied, then checked.

A user who can write under a root could otherwise swap a huge image over a small one between the header check and
the decode (each opened the file again), or put a symlink on the path to make the server read files outside the
roots. Here each file is opened exactly once: the resolved path with `O_NOFOLLOW` (the last component cannot have
become a symlink since it was resolved), and the real path of the open descriptor (`/proc/self/fd/N`, which no
later rename changes) must lie under a root, which catches a folder on the way swapped for a symlink. Its bytes are
copied from that descriptor into the request's private folder under a byte cap per file and per request; the
checks and the decoders read only that copy. Refusals name the client's own path, never what it resolved to.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from dfd.serving.limits import BodyError
from dfd.serving.media_scoring import MediaResult, upload_name

CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # NONBLOCK: a FIFO never hangs


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(r) for r in roots)


def outside(paths: list[str], roots: list[Path]) -> list[str]:
    """The client's paths that do not resolve under a root (the early, friendly 403; the open checks again).

    Raises:
        BodyError: 400 when a path does not resolve (a symlink loop, an unreadable folder on the way).
    """
    try:
        return [p for p in paths if not _under(Path(p).resolve(), roots)]
    except (OSError, RuntimeError, ValueError) as exc:
        raise BodyError(400, "a path does not resolve", "bad_request", type(exc).__name__) from None


def copy_in(paths: list[str], roots: list[Path], folder: Path, max_file_bytes: int, max_total_bytes: int,
            before_open: Callable[[Path], None] | None = None) -> list[tuple[str, Path | MediaResult]]:
    """Each path's private copy in `folder`, or the result that says why there is none.

    Args:
        paths: The client's paths, already found under `roots` by `outside`.
        roots: `serve.path_roots`, resolved.
        folder: The request's private folder.
        max_file_bytes: A file past this is a `too_large` row (`serve.max_upload_bytes`, as an upload).
        max_total_bytes: `serve.max_path_bytes`: all copies together.
        before_open: Called with each resolved path just before it is opened (tests pause here to swap files).

    Raises:
        BodyError: 403 when a path's open descriptor is outside the roots (it changed since the check), 413 when
            the copies pass `max_total_bytes`.
    """
    out: list[tuple[str, Path | MediaResult]] = []
    total = 0
    for i, shown in enumerate(paths):
        resolved = Path(shown).resolve()
        if before_open is not None:
            before_open(resolved)
        try:
            fd = os.open(resolved, _FLAGS)
        except FileNotFoundError:
            out.append((shown, MediaResult(shown, reason="unreadable", detail="missing file")))
            continue
        except OSError as exc:  # ELOOP: the last component became a symlink; EACCES; ...
            raise BodyError(403, "a path changed or cannot be opened", "forbidden",
                            f"{shown[:300]}: {os.strerror(exc.errno or 0)}") from None
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not _under(real, roots):
                raise BodyError(403, "a path leads outside serve.path_roots", "forbidden", shown[:300])
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                out.append((shown, MediaResult(shown, reason="unsupported", detail="not a regular file")))
                continue
            dest = folder / str(i) / upload_name(shown)
            dest.parent.mkdir()
            size, too_big = 0, False
            with dest.open("xb") as f:
                while chunk := os.read(fd, CHUNK):
                    size += len(chunk)
                    total += len(chunk)
                    if total > max_total_bytes:
                        raise BodyError(413, "the listed files are too large together", "too_large",
                                        f"limit serve.max_path_bytes={max_total_bytes}")
                    if size > max_file_bytes:
                        too_big = True
                        break
                    f.write(chunk)
            if too_big:
                dest.unlink()
                out.append((shown, MediaResult(shown, reason="too_large",
                                               detail=f"limit serve.max_upload_bytes={max_file_bytes}")))
            elif size == 0:
                out.append((shown, MediaResult(shown, reason="empty", detail="zero-byte file")))
            else:
                out.append((shown, dest))
        finally:
            os.close(fd)
    return out
