"""Limits that hold while the body streams in, and scoring slots that a timed-out request cannot leak.

- `receive_upload`: parses a multipart body as it arrives (python-multipart's streaming parser) and writes the
  `file` part straight to a private file, refusing with 413 the moment it passes `serve.max_upload_bytes`: chunked
  uploads (no Content-Length) included, nothing beyond the limit is ever held in memory or written to disk.
- `receive_json`: the same for JSON bodies, capped at `serve.max_json_bytes`, parsed off the event loop with depth
  bombs caught.
- `ScoringSlots` (`serve.isolation: thread`): at most `serve.max_concurrent` scorings run, a request waits at most
  `serve.slot_wait_s` for one; a request that times out sets a cancel flag its scoring checks between frames, and
  its slot is freed only when that scoring has actually stopped. (`workers.py` is the default: processes.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from dfd.serving.media_scoring import upload_name

T = TypeVar("T")
FIELD_BYTES = 65_536  # all non-file form fields together: they carry a few words, never data
MAX_PARTS = 16  # a form with the one `file` part and a few fields; thousands of parts is an attack
# Per part: Content-Disposition and Content-Type are all a form needs; python-multipart (>= 0.0.34 checked) stops
# a part with more header lines, or with one longer than a file name can make it, with a parse error.
PART_HEADER_COUNT, PART_HEADER_BYTES = 8, 1024


class BodyError(Exception):
    """A request body refused: the HTTP status, a one-line error and the result reason for the JSON body."""

    def __init__(self, status: int, error: str, reason: str, detail: str | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.reason, self.detail = status, error, reason, detail


class Cancelled(Exception):
    """Raised inside a scoring whose request timed out or whose client went away."""


class SlotsBusy(Exception):
    """Every scoring slot stayed busy for `serve.slot_wait_s`: the caller answers 503 with Retry-After."""


def _too_large(limit: int, what: str) -> BodyError:
    return BodyError(413, f"{what} too large", "too_large", f"limit {limit} bytes")


def _declared_over(request: Request, limit: int) -> bool:
    """True when Content-Length already says the body is over `limit` (refused before a byte is read)."""
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > limit


@dataclass
class Upload:
    """The uploaded file: where its bytes are, the client's file name, its size."""

    path: Path
    filename: str
    size: int


class _FilePart:
    """python-multipart callbacks that stream the `file` part to `dest`, counting every byte against the limits."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit
        self.path: Path | None = None
        self.size = self.field_bytes = self.parts = 0
        self.filename: str | None = None
        self._header, self._value = bytearray(), bytearray()
        self._disposition = b""
        self._out: Any = None  # the open file while inside the `file` part
        self._in_file = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.data, "on_part_end": self.end}

    def begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BodyError(400, "too many form parts", "bad_request", f"at most {MAX_PARTS}")
        self._disposition, self._in_file = b"", False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        if bytes(self._header).lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header.clear()
        self._value.clear()

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"filename" in options and options.get(b"name") != b"file":  # a file under another name: say so now
            name = options.get(b"name", b"").decode("utf-8", "replace")[:50]
            raise BodyError(400, f"a file part named '{name}'", "bad_request", "send the file as the `file` field")
        if options.get(b"name") == b"file" and b"filename" in options:
            if self.filename is not None:
                raise BodyError(400, "more than one `file` part", "bad_request", "send one file per request")
            self.filename = options[b"filename"].decode("utf-8", "replace")[:255] or "upload"
            self._in_file = True
            self.path = self.folder / upload_name(self.filename)
            self._out = self.path.open("xb")

    def data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._in_file:
            self.size += n
            if self.size > self.limit:  # checked before writing: the file never exceeds the limit
                raise _too_large(self.limit, "upload")
            self._out.write(data[start:end])
        else:
            self.field_bytes += n
            if self.field_bytes > FIELD_BYTES:
                raise _too_large(FIELD_BYTES, "form fields")

    def end(self) -> None:
        if self._in_file:
            self._out.close()
            self._out, self._in_file = None, False

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


async def receive_upload(request: Request, folder: Path, limit: int) -> Upload:
    """Stream a multipart body's `file` part into a file in `folder` (private to the request), refusing with 413
    as soon as it passes `limit` bytes.

    Raises:
        BodyError: 413 over the limit (declared or counted), 400 for a malformed form or no `file` part.
    """
    overhead = limit + FIELD_BYTES + 65_536  # the file, the small fields, and the part headers and boundaries
    if _declared_over(request, overhead):
        raise _too_large(limit, "upload")
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise BodyError(400, "multipart body without a boundary", "bad_request", "send multipart/form-data")
    part = _FilePart(folder, limit)
    parser = MultipartParser(boundary, part.callbacks(), max_header_count=PART_HEADER_COUNT,
                             max_header_size=PART_HEADER_BYTES)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > overhead:
                raise _too_large(limit, "upload")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise BodyError(400, "malformed multipart body", "bad_request", str(exc)[:200]) from None
    except ClientDisconnect:
        raise BodyError(400, "the client went away mid-upload", "bad_request") from None
    finally:
        part.close()
    if part.filename is None or part.path is None:
        raise BodyError(400, "no file uploaded", "empty", "send multipart/form-data with a `file` field")
    return Upload(part.path, part.filename, part.size)


async def receive_json(request: Request, limit: int) -> Any:
    """A JSON body of at most `limit` bytes, parsed in a worker thread (a 32 MB parse blocks for a second: never
    on the event loop, where it would stall /health and every upload being received).

    Raises:
        BodyError: 413 over the limit (declared or counted, before more than `limit` is held), 400 not JSON.
    """
    if _declared_over(request, limit):
        raise _too_large(limit, "JSON body")
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise _too_large(limit, "JSON body")
            body += chunk
    except ClientDisconnect:
        raise BodyError(400, "the client went away mid-request", "bad_request") from None
    try:
        return await asyncio.to_thread(json.loads, body)
    except (ValueError, RecursionError) as exc:  # RecursionError: `[[[[...]]]]` nested past Python's stack
        raise BodyError(400, "the body is not valid JSON", "bad_request", f"{type(exc).__name__}: {exc}"[:200]
                        ) from None


class ScoringSlots:
    """At most `n` scorings at once, each in a worker thread with a cancel flag.

    A request that times out (or whose client disconnects) sets its flag; the scoring raises `Cancelled` at its
    next check (between frames, between files) and only then frees its slot, so a timed-out request can never
    leave a scoring running outside the limit. `running` and `peak` count scorings in their threads.

    Args:
        n: `serve.max_concurrent`.
        timeout_s: `serve.request_timeout_s`, counted from the moment a slot is free.
    """

    def __init__(self, n: int, timeout_s: float, wait_s: float = float("inf")) -> None:
        self.timeout_s, self.wait_s = timeout_s, wait_s
        self._slots = asyncio.Semaphore(n)
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="dfd-score")  # never more threads than slots
        self._lock = threading.Lock()
        self.running = self.peak = 0

    def _run(self, fn: Callable[[Callable[[], None]], T], cancel: threading.Event) -> T:
        def check() -> None:
            if cancel.is_set():
                raise Cancelled

        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            check()  # cancelled while queued: do nothing
            return fn(check)
        finally:
            with self._lock:
                self.running -= 1

    async def run(self, fn: Callable[[Callable[[], None]], T], timeout_s: float | None = None,
                  on_done: Callable[[], None] | None = None) -> T:
        """`fn(check_cancel)` in a worker thread within the timeout (`timeout_s`, else the slots' own).

        `on_done` is called in the event loop once the scoring has actually stopped (at once when it never
        started): what it guards stays held while a timed-out scoring runs on to its next cancel check.

        Raises:
            SlotsBusy: No slot came free within `wait_s`.
            TimeoutError: Past the timeout; the scoring is told to stop and keeps its slot until it has.
        """
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s if self.wait_s < float("inf") else None)
        except BaseException as exc:  # no slot in time, or the request cancelled while it waited
            if on_done is not None:
                on_done()
            if isinstance(exc, TimeoutError):
                raise SlotsBusy from None
            raise
        cancel = threading.Event()
        try:
            future: Future[T] = self._pool.submit(self._run, fn, cancel)
        except BaseException:
            self._slots.release()
            if on_done is not None:
                on_done()
            raise
        loop = asyncio.get_running_loop()

        def release(_: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is exiting anyway
                loop.call_soon_threadsafe(self._slots.release)
                if on_done is not None:
                    loop.call_soon_threadsafe(on_done)

        future.add_done_callback(release)
        wrapped = asyncio.wrap_future(future)
        # A cancelled scoring ends in `Cancelled` that nobody awaits any more: fetch it so it is not logged as lost.
        wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(wrapped), timeout_s or self.timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            cancel.set()
            raise

    def shutdown(self) -> None:
        """Stop taking work (at server exit); running scorings finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
