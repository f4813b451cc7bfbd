"""`dfd serve`: the registered ensemble over HTTP (FastAPI + uvicorn).

- `POST /predict`: multipart upload (`file`) of one image or video -> P(fake), label, frames, faces, reason; or
  JSON `{"paths": [...]}` naming files on the server's disk, allowed only under `serve.path_roots` (403 otherwise).
- `POST /invocations`: MLflow's scoring protocol for face crops (`{"inputs": [[[[r, g, b], ...]]]}` or `instances`).
- `GET /health` (ok/degraded and the model version; no token needed), `GET /version` (name, version, alias, tags).

With a token in `$serve.auth_token_env`, every route but /health needs `Authorization: Bearer <token>` (auth.py).
Bodies are read as streams under the `serve:` limits, headers are checked before any decode, and a request that
times out stops its scoring (limits.py, media_checks.py). Bad input gets a 4xx JSON error
`{"error", "reason", "detail"}` and the server keeps serving; a file without a face is a 200 with reason `no_face`.
The model is swapped without a restart when the alias moves (see `ModelHolder`).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dfd.evaluation.aggregate import list_aggregations
from dfd.platform.config import ServeParams
from dfd.serving.auth import BearerAuth, check_exposure, token_from_env
from dfd.serving.limits import BodyError, ScoringSlots, receive_json, receive_upload
from dfd.serving.media_scoring import MediaResult, MediaScorer
from dfd.serving.registry_model import LoadedModel, load, resolve_version

log = logging.getLogger(__name__)

# A result's reason -> HTTP status: the client's file is at fault (4xx); no face is an answer, not an error.
STATUS = {"unsupported": 415, "empty": 400, "unreadable": 422, "truncated": 422, "too_long": 413, "too_large": 413}


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


def _refused(exc: BodyError) -> JSONResponse:
    return _error(exc.status, exc.error, exc.reason, exc.detail)


def _aggregation_error(aggregate: Any) -> JSONResponse | None:
    """A 400 for an aggregation rule that does not exist; None for a known one or none."""
    if aggregate is None or (isinstance(aggregate, str) and aggregate in list_aggregations()):
        return None
    return _error(400, f"unknown aggregation '{str(aggregate)[:50]}'", "bad_request", ", ".join(list_aggregations()))


def _crops_only() -> JSONResponse:
    return _error(409, "the served model has no faces params: it scores crops only", "crops_only")


def _timed_out(cfg: ServeParams) -> JSONResponse:
    return _error(504, "scoring timed out", "timeout", f"over {cfg.request_timeout_s} s")


def file_result(res: MediaResult, scorer: MediaScorer, model: LoadedModel) -> tuple[int, dict[str, Any]]:
    """The one place a scored file becomes an answer: (HTTP status, body), for an upload or a path-list row."""
    body = {**res.json_row(), "threshold": scorer.threshold, "model_version": model.version}
    if res.reason in STATUS:
        return STATUS[res.reason], {**body, "error": res.detail or res.reason}
    return 200, body


def parse_crops(payload: Any) -> np.ndarray:
    """MLflow scoring JSON to RGB uint8 crops (N, H, W, 3).

    Raises:
        BodyError: 400 for a wrong shape or type (floats must be whole numbers), 422 for values outside 0..255.
    """
    rows = payload.get("inputs", payload.get("instances")) if isinstance(payload, dict) else None
    expected = 'expected {"inputs": RGB uint8 crops (N, H, W, 3)}'
    if rows is None:
        raise BodyError(400, "body is not MLflow scoring JSON with crops", "bad_request", expected)
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged nesting, mixed types
        raise BodyError(400, "crops are not a regular array", "bad_request", str(exc)[:200]) from None
    if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise BodyError(400, expected, "bad_request", f"got shape {list(arr.shape)}")
    whole = arr.dtype.kind == "f" and bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())
    if arr.dtype.kind not in "iu" and not whole:
        raise BodyError(400, "pixel values must be whole numbers 0..255", "bad_request", f"got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 255:
        raise BodyError(422, "pixel values outside 0..255", "out_of_range",
                        f"min {arr.min():g}, max {arr.max():g}")
    return arr.astype(np.uint8)


def parse_paths(payload: Any, max_paths: int) -> tuple[list[str], Any]:
    """`{"paths": [...], "aggregate": ...}` checked: (paths, aggregate).

    Raises:
        BodyError: 400 for a wrong shape, an empty, overlong or NUL-carrying path; 413 past `max_paths`.
    """
    paths = payload.get("paths") if isinstance(payload, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise BodyError(400, 'expected JSON {"paths": ["/path/to/file", ...]}', "bad_request",
                        "`paths` must be a non-empty list of non-empty strings")
    if len(paths) > max_paths:
        raise BodyError(413, "too many paths", "too_large", f"{len(paths)}; limit serve.max_paths={max_paths}")
    if any("\0" in p or len(p) > 4096 for p in paths):
        raise BodyError(400, "a path holds a NUL byte or is over 4096 characters", "bad_request")
    return paths, payload.get("aggregate")


# Called with each scored file's result and the version that scored it, in the scoring thread; returns the result.
OnResult = Callable[[MediaResult, str | None], MediaResult]


def _unobserved(res: MediaResult, version: str | None) -> MediaResult:
    return res


def create_app(holder: ModelHolder, cfg: ServeParams, token: str | None = None,
               on_result: OnResult | None = None) -> FastAPI:
    """The HTTP app over `holder`'s current model.

    With `token`, every route but /health needs it; `on_result` sees every scored file (the traffic log's hook).
    """
    seen = on_result or _unobserved
    slots = ScoringSlots(cfg.max_concurrent, cfg.request_timeout_s)
    # Uploads being received at once: each may hold up to max_upload_bytes on disk, so this bounds the disk too.
    receiving = asyncio.Semaphore(2 * cfg.max_concurrent)
    roots = [Path(r).resolve() for r in cfg.path_roots]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        slots.shutdown()

    app = FastAPI(title="dfd deepfake detector", version="1", lifespan=lifespan)
    app.state.slots = slots
    if token:
        app.add_middleware(BearerAuth, token=token)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request", "bad_request", str(exc.errors())[:300])

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's input: the traceback goes to the log, the client gets no internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal error", "internal", "see the server log")

    @app.middleware("http")
    async def model_warning(request: Request, call_next: Callable[[Request], Any]) -> Any:
        """Every response of a model trained on synthetic faces says so (`/version` also in its body)."""
        response = await call_next(request)
        if (warning := holder.current.warning) is not None:
            response.headers["X-Model-Warning"] = warning
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        m = holder.current
        # Degraded: serving, but the last registry poll failed (why goes to the log: it may name URIs).
        return {"status": "degraded" if holder.last_error else "ok", "model": m.name, "version": m.version}

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {**holder.current.info(), "swaps": holder.swaps}

    @app.post("/predict")
    async def predict(request: Request, aggregate: str | None = None) -> Any:
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("application/json"):
            return await predict_paths(request)
        if not ctype.startswith("multipart/form-data"):
            return _error(415, "send multipart/form-data with a `file` field, or JSON {\"paths\": [...]}",
                          "unsupported", f"got content-type {ctype[:100] or 'none'}")
        if (bad := _aggregation_error(aggregate)) is not None:
            return bad
        model = holder.current  # this request's model, whatever the poller swaps in meanwhile
        scorer = model.python_model.scorer
        if scorer is None:
            return _crops_only()
        async with receiving:
            with tempfile.TemporaryDirectory(prefix="dfd-upload-") as tmp:
                try:
                    up = await asyncio.wait_for(receive_upload(request, Path(tmp), cfg.max_upload_bytes),
                                                cfg.request_timeout_s)
                except BodyError as exc:
                    return _refused(exc)
                except TimeoutError:
                    return _error(408, "upload too slow", "timeout", f"not received in {cfg.request_timeout_s} s")

                def score(check: Callable[[], None]) -> MediaResult:
                    # this server's limits; the result goes by the traffic log in this (the scoring) thread
                    return seen(scorer.score_upload(up.path, up.filename, aggregate, check, cfg), model.version)

                try:
                    res = await slots.run(score)
                except TimeoutError:
                    return _timed_out(cfg)
        status, body = file_result(res, scorer, model)
        return JSONResponse(body, status_code=status)

    async def predict_paths(request: Request) -> Any:
        """`{"paths": [...], "aggregate": ...}`: files on the server's disk, under `serve.path_roots` only."""
        if not roots:
            return _error(403, "path lists are off on this server", "forbidden",
                          "upload the file, or list the folders it may read in serve.path_roots")
        try:
            paths, aggregate = parse_paths(await receive_json(request, cfg.max_json_bytes), cfg.max_paths)
            resolved = [Path(p).resolve() for p in paths]  # symlinks and `..` resolved before the check
        except BodyError as exc:
            return _refused(exc)
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, an unreadable folder on the way
            return _error(400, "a path does not resolve", "bad_request", type(exc).__name__)
        if (bad := _aggregation_error(aggregate)) is not None:
            return bad
        outside = [p for p, r in zip(paths, resolved, strict=True) if not any(r.is_relative_to(o) for o in roots)]
        if outside:
            return _error(403, "paths outside serve.path_roots", "forbidden", ", ".join(outside[:5])[:500])
        model = holder.current
        scorer = model.python_model.scorer
        if scorer is None:
            return _crops_only()

        def score_all(check: Callable[[], None]) -> list[tuple[str, MediaResult]]:
            out = []
            for p, r in zip(paths, resolved, strict=True):
                check()  # between files too
                out.append((p, seen(scorer.score_path(r, aggregate, check, cfg), model.version)))
            return out

        try:
            results = await slots.run(score_all)
        except TimeoutError:
            return _timed_out(cfg)
        rows = [file_result(res, scorer, model)[1] | {"path": p} for p, res in results]
        return {"results": rows, "threshold": scorer.threshold, "model_version": model.version}

    @app.post("/invocations")
    async def invocations(request: Request) -> Any:
        try:
            crops = parse_crops(await receive_json(request, cfg.max_json_bytes))
        except BodyError as exc:
            return _refused(exc)
        model = holder.current
        try:
            scores = await slots.run(lambda check: model.pyfunc.predict(crops))
        except TimeoutError:
            return _timed_out(cfg)
        return {"predictions": np.asarray(scores, dtype=float).tolist()}

    return app


def serve(uri: str, tracking_uri: str, cfg: ServeParams, host: str = "127.0.0.1", port: int = 8000,
          insecure: bool = False, on_result: OnResult | None = None) -> None:
    """Check the exposure rules, load the model, start the alias poller, and serve until interrupted.

    `on_result` sees every scored file (the traffic log's hook).

    Raises:
        DfdError: A non-loopback `host` without a token in `$cfg.auth_token_env` (unless `insecure`), or a short
            token: before anything is loaded.
    """
    import uvicorn

    token = token_from_env(cfg.auth_token_env)
    check_exposure(host, token, insecure, cfg.auth_token_env)
    holder = ModelHolder(uri, tracking_uri, partial(load, precision=cfg.precision,
                                                   max_precision_error=cfg.max_precision_error))
    holder.start(cfg.poll_interval_s)
    log.info("serving %s (version %s) on http://%s:%d, %s", uri, holder.current.version, host, port,
             f"token from ${cfg.auth_token_env}" if token else "no token")
    try:
        uvicorn.run(create_app(holder, cfg, token, on_result), host=host, port=port, log_level="info")
    finally:
        holder.stop()
