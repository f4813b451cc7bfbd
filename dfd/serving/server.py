"""`dfd serve`: the registered ensemble over HTTP (FastAPI + uvicorn).

- `POST /predict`: multipart upload (`file`) of one image or video -> P(fake), label, frames, faces, reason; or
  JSON `{"paths": [...]}` naming files on the server's disk, allowed only under `serve.path_roots` (403 otherwise).
- `POST /invocations`: MLflow's scoring protocol for face crops (`{"inputs": [[[[r, g, b], ...]]]}` or `instances`).
- `GET /health`, `GET /version` (model name, version, alias, lineage tags).

Bad input gets a 4xx JSON error `{"error", "reason", "detail"}` and the server keeps serving; a file without a face
is a 200 with reason `no_face`. The model is swapped without a restart when the alias moves (see `ModelHolder`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dfd.evaluation.aggregate import list_aggregations
from dfd.platform.config import ServeParams
from dfd.serving.media_scoring import MediaResult
from dfd.serving.registry_model import LoadedModel, load, resolve_version

log = logging.getLogger(__name__)

# A result's reason -> HTTP status: the client's file is at fault (4xx); no face is an answer, not an error.
STATUS = {"unsupported": 415, "empty": 400, "unreadable": 422, "truncated": 422, "too_long": 413}


class ModelHolder:
    """The model being served, and a poller that swaps in the version the alias points at.

    A request takes `holder.current` once and scores with it to the end, so a swap (one reference assignment, atomic
    under the GIL) never changes the model under a running request; the old model is freed when the last such
    request returns.

    Args:
        uri: What to serve (`models:/name@alias` is polled; a version or a folder is fixed).
        tracking_uri: The registry.
        loader: Loads a URI (injectable for tests of the swap logic; the server uses `registry_model.load`).
    """

    def __init__(self, uri: str, tracking_uri: str, loader: Callable[[str, str], LoadedModel] = load) -> None:
        self.uri, self.tracking_uri, self.loader = uri, tracking_uri, loader
        self.current = loader(uri, tracking_uri)
        self.swaps = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Load and swap in the alias's version when it moved; True when a swap happened."""
        if self.current.alias is None:
            return False
        try:
            _, version, _, _ = resolve_version(self.uri, self.tracking_uri)
            if version == self.current.version:
                return False
            fresh = self.loader(self.uri, self.tracking_uri)  # loaded beside the old one, which keeps serving
        except Exception as exc:  # keep serving the old model; say why on /health
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("model refresh failed, still serving version %s: %s", self.current.version, self.last_error)
            return False
        log.info("alias moved: swapping version %s for %s", self.current.version, fresh.version)
        self.current, self.last_error = fresh, None
        self.swaps += 1
        return True

    def start(self, interval_s: float) -> None:
        if interval_s <= 0 or self.current.alias is None:
            return

        def poll() -> None:
            while not self._stop.wait(interval_s):
                self.check_once()

        self._thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _error(status: int, error: str, reason: str, detail: str | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason, "detail": detail}, status_code=status)


def _aggregation_error(aggregate: str | None) -> JSONResponse | None:
    """A 400 for an aggregation rule that does not exist; None for a known one or none."""
    if aggregate is None or aggregate in list_aggregations():
        return None
    return _error(400, f"unknown aggregation '{aggregate}'", "bad_request", ", ".join(list_aggregations()))


def _crops_only() -> JSONResponse:
    return _error(409, "the served model has no faces params: it scores crops only", "crops_only")


def _timed_out(cfg: ServeParams) -> JSONResponse:
    return _error(504, "scoring timed out", "timeout", f"over {cfg.request_timeout_s} s")


async def _read_limited(upload: UploadFile, limit: int) -> bytes | None:
    """The upload's bytes, or None as soon as it exceeds `limit` (never more than limit + 1 MiB in memory)."""
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# Called with each scored file's result and the version that scored it, in the scoring thread; returns the result.
OnResult = Callable[[MediaResult, str | None], MediaResult]


def _unobserved(res: MediaResult, version: str | None) -> MediaResult:
    return res


def create_app(holder: ModelHolder, cfg: ServeParams, on_result: OnResult | None = None) -> FastAPI:
    """The HTTP app over `holder`'s current model; `on_result` sees every scored file (the traffic log's hook)."""
    app = FastAPI(title="dfd deepfake detector", version="1")
    seen = on_result or _unobserved
    slots = asyncio.Semaphore(cfg.max_concurrent)
    roots = [Path(r).resolve() for r in cfg.path_roots]

    async def scored(fn: Callable[[], Any]) -> Any:
        """Run CPU-bound scoring in a worker thread, at most `max_concurrent` at once, within the timeout."""
        async with slots:
            return await asyncio.wait_for(run_in_threadpool(fn), cfg.request_timeout_s)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        m = holder.current
        return {"status": "ok", "model": m.name, "version": m.version, "refresh_error": holder.last_error}

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {**holder.current.info(), "swaps": holder.swaps}

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile | None = None, aggregate: str | None = None) -> Any:
        if file is None and request.headers.get("content-type", "").startswith("application/json"):
            return await predict_paths(request)
        if file is None:
            return _error(400, "no file uploaded", "empty", "send multipart/form-data with a `file` field")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_upload_bytes + 65536:
            return _error(413, "upload too large", "too_large", f"limit {cfg.max_upload_bytes} bytes")
        data = await _read_limited(file, cfg.max_upload_bytes)
        if data is None:
            return _error(413, "upload too large", "too_large", f"limit {cfg.max_upload_bytes} bytes")
        if (bad := _aggregation_error(aggregate)) is not None:
            return bad
        model = holder.current  # this request's model, whatever the poller swaps in meanwhile
        scorer = model.python_model.scorer
        if scorer is None:
            return _crops_only()
        try:
            res = await scored(lambda: seen(scorer.score_bytes(data, file.filename or "upload", aggregate),
                                            model.version))
        except TimeoutError:
            return _timed_out(cfg)
        body = {**res.row(), "threshold": scorer.threshold, "model_version": model.version}
        if res.reason in STATUS:
            return JSONResponse({**body, "error": res.detail or res.reason}, status_code=STATUS[res.reason])
        return body

    async def predict_paths(request: Request) -> Any:
        """`{"paths": [...], "aggregate": ...}`: files on the server's disk, under `serve.path_roots` only."""
        if not roots:
            return _error(403, "path lists are off on this server", "forbidden",
                          "upload the file, or list the folders it may read in serve.path_roots")
        try:
            payload = await request.json()
            paths = payload["paths"]
            if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
                raise TypeError("`paths` must be a non-empty list of strings")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, 'expected JSON {"paths": ["/path/to/file", ...]}', "bad_request", str(exc)[:200])
        aggregate = payload.get("aggregate")
        if (bad := _aggregation_error(aggregate)) is not None:
            return bad
        resolved = [Path(p).resolve() for p in paths]  # symlinks and `..` resolved before the check
        outside = [p for p, r in zip(paths, resolved, strict=True) if not any(r.is_relative_to(o) for o in roots)]
        if outside:
            return _error(403, "paths outside serve.path_roots", "forbidden", ", ".join(outside[:5]))
        model = holder.current
        scorer = model.python_model.scorer
        if scorer is None:
            return _crops_only()
        try:
            rows = await scored(lambda: [seen(scorer.score_path(r, aggregate), model.version).row() | {"path": p}
                                         for p, r in zip(paths, resolved, strict=True)])
        except TimeoutError:
            return _timed_out(cfg)
        return {"results": rows, "threshold": scorer.threshold, "model_version": model.version}

    @app.post("/invocations")
    async def invocations(request: Request) -> Any:
        try:
            payload = await request.json()
            rows = payload.get("inputs", payload.get("instances")) if isinstance(payload, dict) else None
            crops = np.asarray(rows, dtype=np.uint8) if rows is not None else None
        except (ValueError, TypeError) as exc:
            return _error(400, "body is not MLflow scoring JSON with crops", "bad_request", str(exc)[:200])
        if crops is None or crops.ndim != 4 or crops.shape[-1] != 3:
            shape = None if crops is None else list(crops.shape)
            return _error(400, "expected {\"inputs\": RGB uint8 crops (N, H, W, 3)}", "bad_request", f"got {shape}")
        model = holder.current
        try:
            scores = await scored(lambda: model.pyfunc.predict(crops))
        except TimeoutError:
            return _timed_out(cfg)
        return {"predictions": np.asarray(scores, dtype=float).tolist()}

    return app


def serve(uri: str, tracking_uri: str, cfg: ServeParams, host: str = "127.0.0.1", port: int = 8000,
          on_result: OnResult | None = None) -> None:
    """Load the model, start the alias poller, and serve until interrupted."""
    import uvicorn

    holder = ModelHolder(uri, tracking_uri, partial(load, precision=cfg.precision,
                                                   max_precision_error=cfg.max_precision_error))
    holder.start(cfg.poll_interval_s)
    log.info("serving %s (version %s) on http://%s:%d", uri, holder.current.version, host, port)
    try:
        uvicorn.run(create_app(holder, cfg, on_result), host=host, port=port, log_level="info")
    finally:
        holder.stop()
