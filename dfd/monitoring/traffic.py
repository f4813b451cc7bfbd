"""Served-traffic records: one row per scored file, written off the request path by a queue and a writer thread.

A record holds when, which model version, P(fake), the decision, its status and member agreement, frames and faces
found, the reason a file was not scored (or is uncertain), and the mean image statistics of its face crops (the drift
report's columns, `dfd.evaluation.drift`). It never holds the media, nor the client's address, nor the file name
unless `serve.log_names: true`.

The request thread only computes the crops' statistics (milliseconds against the models' hundreds) and puts a small
dict on a bounded queue; a full queue drops the record and counts it rather than slow or block a request. The writer
thread turns what waits into one Parquet part per UTC day (`day=YYYY-MM-DD/part-<time>-<pid>-<n>.parquet`) every
`monitor.flush_interval_s` or `monitor.flush_records`, and deletes its own day folders past `monitor.retention_days`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dfd.evaluation.drift import STAT_COLUMNS, image_stats
from dfd.monitoring.store import RecordStore, day_of, open_store
from dfd.platform.config import MonitorParams, StorageParams
from dfd.platform.interrupts import held_signals
from dfd.serving.media_scoring import MediaResult

log = logging.getLogger(__name__)

# A fixed schema, so that a part of unscored files only (every P(fake) null) still reads back with the right types.
SCHEMA = pa.schema([("time", pa.timestamp("us", tz="UTC")), ("source", pa.string()), ("model_version", pa.string()),
                    ("p_fake", pa.float64()), ("label", pa.string()), ("frames", pa.int32()),
                    ("faces", pa.int32()), ("crops", pa.int32()), ("reason", pa.string()),
                    *[(c, pa.float64()) for c in STAT_COLUMNS], ("name", pa.string()),
                    # Added later: parts written before them read back with nulls (pyarrow fills missing columns).
                    ("status", pa.string()), ("agreement", pa.float64())])
_STOP = object()


def make_record(res: MediaResult, model_version: str | None, source: str, log_names: bool = False,
                now: datetime | None = None) -> dict[str, Any]:
    """The record of one scored file (no media, no address; the name only when `log_names`)."""
    crops = [c["crop"] for c in res.crops if "crop" in c]
    stats = (image_stats(np.stack(crops)).mean().to_dict() if crops
             else dict.fromkeys(STAT_COLUMNS, None))
    return {"time": now or datetime.now(UTC), "source": source, "model_version": model_version,
            "p_fake": res.p_fake, "label": res.label, "frames": res.frames, "faces": res.faces,
            "crops": len(crops), "reason": res.reason, **stats,
            "name": Path(res.path).name if log_names else None, "status": res.status, "agreement": res.agreement}


def encode(records: list[dict[str, Any]]) -> bytes:
    """Records as one Parquet file's bytes."""
    table = pa.Table.from_pylist(records, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class TrafficLog:
    """The queue and the writer thread; `record()` is all a request does.

    Args:
        store: Where parts go (`open_store`).
        cfg: Flush cadence, queue bound, retention.
        source: `serve` or `predict`, recorded on every row.
        log_names: Record file names (`serve.log_names`).
    """

    def __init__(self, store: RecordStore, cfg: MonitorParams, source: str = "serve", log_names: bool = False) -> None:
        self.store, self.cfg, self.source, self.log_names = store, cfg, source, log_names
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=cfg.queue_size)
        self.dropped = 0  # records lost to a full queue
        self.written = 0
        self.failed_writes = 0
        self._parts = 0
        self._thread: threading.Thread | None = None
        self._pruned_on: date | None = None

    @classmethod
    def from_params(cls, cfg: MonitorParams, storage: StorageParams, source: str, log_names: bool,
                    root: Path | None = None) -> TrafficLog | None:
        """The log `monitor.log_dir` names, or None when it is null (recording off)."""
        if not cfg.log_dir:
            return None
        return cls(open_store(cfg.log_dir, storage, root), cfg, source, log_names)

    def record(self, res: MediaResult, model_version: str | None) -> MediaResult:
        """Queue the record of `res` (never blocks; a full queue drops it) and return `res` unchanged."""
        try:
            self.queue.put_nowait(make_record(res, model_version, self.source, self.log_names))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("traffic log: queue full, %d record(s) dropped so far", self.dropped)
        except Exception as exc:  # a record that cannot be made must never fail the request it describes
            self.dropped += 1
            log.warning("traffic log: record not made: %s: %s", type(exc).__name__, exc)
        return res

    def start(self) -> TrafficLog:
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what waits and stop the writer, before the process goes on to exit; say what was written.

        SIGTERM and Ctrl-C are held until the last part is written (at most `timeout_s`): a second signal during
        shutdown must not end the process with records still waiting, nor leave a writer running into a folder
        that whoever stopped the server may be deleting once the process is gone.
        """
        if self._thread is None:
            return
        with held_signals():  # a signal held here is delivered once the lines below are written
            deadline = time.monotonic() + timeout_s
            with contextlib.suppress(queue.Full):  # a writer that died drains nothing: the join below says so
                self.queue.put(_STOP, timeout=timeout_s)
            self._thread.join(max(0.0, deadline - time.monotonic()))
            alive, self._thread = self._thread.is_alive(), None
            if alive:
                log.error("traffic log: the writer did not finish within %.0f s; the records still waiting are lost",
                          timeout_s)
            else:
                log.info("traffic log: stopped; %d record(s) written to %s (%d dropped, %d not written)",
                         self.written, self.store.where, self.dropped, self.failed_writes)

    def __enter__(self) -> TrafficLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        last = time.monotonic()
        self._prune()
        while True:
            wait = max(0.0, self.cfg.flush_interval_s - (time.monotonic() - last))
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            stop = item is _STOP
            if item is not None and not stop:
                pending.append(item)
            if pending and (stop or len(pending) >= self.cfg.flush_records
                            or time.monotonic() - last >= self.cfg.flush_interval_s):
                self._flush(pending)
                pending = []
            if time.monotonic() - last >= self.cfg.flush_interval_s:
                last = time.monotonic()
                self._prune()
            if stop:
                return

    def _flush(self, records: list[dict[str, Any]]) -> None:
        by_day: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_day.setdefault(r["time"].astimezone(UTC).date().isoformat(), []).append(r)
        for day, rows in by_day.items():
            self._parts += 1
            name = f"day={day}/part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._parts}.parquet"
            try:
                self.store.put(name, encode(rows))
                self.written += len(rows)
            except Exception as exc:  # a store that is down loses these records, never the server
                self.failed_writes += len(rows)
                log.error("traffic log: %d record(s) not written to %s: %s: %s", len(rows), self.store.where,
                          type(exc).__name__, exc)

    def _prune(self) -> None:
        """Delete this log's parts older than the retention, once a day."""
        today = datetime.now(UTC).date()
        if self._pruned_on == today:
            return
        self._pruned_on = today
        try:
            removed = prune(self.store, self.cfg.retention_days, today)
        except Exception as exc:
            log.warning("traffic log: retention not applied in %s: %s: %s", self.store.where, type(exc).__name__, exc)
            return
        if removed:
            log.info("traffic log: %d part(s) older than %d days deleted", removed, self.cfg.retention_days)


def prune(store: RecordStore, retention_days: int, today: date | None = None) -> int:
    """Delete the parts of days older than `retention_days`; returns how many (only names the log writes)."""
    cutoff = ((today or datetime.now(UTC).date()) - timedelta(days=retention_days)).isoformat()
    old = [n for n in store.names() if day_of(n) < cutoff]
    for name in old:
        store.delete(name)
    return len(old)


def read_records(store: RecordStore, since: datetime, until: datetime | None = None) -> pd.DataFrame:
    """The records with `since <= time < until`, oldest first (only the day folders in range are read)."""
    until = until or datetime.now(UTC)
    first, last = since.astimezone(UTC).date().isoformat(), until.astimezone(UTC).date().isoformat()
    frames = []
    for name in store.names():
        if first <= day_of(name) <= last:
            try:
                frames.append(pq.read_table(io.BytesIO(store.get(name)), schema=SCHEMA).to_pandas())
            except (pa.ArrowException, OSError) as exc:  # one damaged part must not hide the week's others
                log.warning("traffic log: part %s in %s skipped, unreadable: %s", name, store.where, exc)
    if not frames:
        return SCHEMA.empty_table().to_pandas()
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["time"] >= pd.Timestamp(since).tz_convert(UTC)) & (df["time"] < pd.Timestamp(until).tz_convert(UTC))]
    return df.sort_values("time").reset_index(drop=True)


def parse_window(text: str) -> timedelta:
    """`7d`, `36h`, `90m`, `2w` -> a timedelta; one clear error otherwise."""
    from dfd.platform.errors import ConfigError

    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise ConfigError(f"not a time window: {text!r}", "write it as a number and a unit: 30m, 36h, 7d, 2w")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def window_start(text: str, now: datetime) -> datetime:
    """The start of a window given as a length before `now` (`7d`) or as an ISO 8601 time (UTC unless zoned)."""
    return parse_time(text) if text[:1].isdigit() and "-" in text else now - parse_window(text)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time, UTC unless it names its zone; one clear error otherwise."""
    from dfd.platform.errors import ConfigError

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not a time: {text!r}", "write it as 2026-05-04T03:00:00Z (or a length: 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
