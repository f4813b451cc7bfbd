"""`dfd serve`: the registered ensemble over HTTP (FastAPI + uvicorn).

- `POST /predict`: multipart upload (`file`) of one image or video -> P(fake), label, frames, faces, reason; or
  JSON `{"paths": [...]}` naming files on the server's disk, allowed only under `serve.path_roots` (403 otherwise).
  `?explain=1` (with `serve.explain`, one request at a time): the `dfd predict --report` content as JSON
  (dfd/serving/explain.py), within `serve.explain_timeout_s`.
- `POST /invocations`: MLflow's scoring protocol for face crops (`{"inputs": [[[[r, g, b], ...]]]}` or `instances`).
- `GET /health` (ok/degraded and the model version; no token needed), `GET /version` (name, version, alias, tags).

With tokens in `$serve.auth_token_env`/`$serve.auth_tokens_env`, every route but /health needs
`Authorization: Bearer <token>`; without, only this machine is answered; clients are rate-limited (auth.py).
Bodies are read as streams under the `serve:` limits (limits.py), path lists are opened once and copied
(drop_folders.py), headers are checked before any decode (media_checks.py), and scoring runs in worker processes
that are killed when a request overruns its timeout (workers.py). Bad input gets a 4xx JSON error
`{"error", "reason", "detail"}` and the server keeps serving; a file without a face is a 200 with reason `no_face`.
The model is swapped without a restart when the alias moves (see `ModelHolder`).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dfd.evaluation.aggregate import list_aggregations
from dfd.platform.config import ReportParams, ServeParams
from dfd.serving import drop_folders
from dfd.serving import workers as jobs
from dfd.serving.auth import Gate, check_exposure, tokens_from_env
from dfd.serving.explain import ExplainGate, explain_upload
from dfd.serving.holder import ModelHolder
from dfd.serving.limits import BodyError, ScoringSlots, SlotsBusy, receive_json, receive_upload
from dfd.serving.media_scoring import MediaResult, MediaScorer
from dfd.serving.payloads import parse_crops, parse_paths
from dfd.serving.registry_model import LoadedModel, load
from dfd.serving.workers import ModelSpec, WorkerFailed, WorkerPool

__all__ = ["ModelHolder", "create_app", "file_result", "parse_crops", "parse_paths", "serve"]
T = TypeVar("T")

log = logging.getLogger(__name__)

# A result's reason -> HTTP status: the client's file is at fault (4xx); no face is an answer, not an error.
STATUS = {"unsupported": 415, "empty": 400, "unreadable": 422, "truncated": 422, "too_long": 413, "too_large": 413}


def _error(status: int, error: str, reason: str, detail: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason, "detail": detail}, status_code=status, headers=headers)


def _refused(exc: BodyError) -> JSONResponse:
    # Connection: close, so that uvicorn closes the socket instead of reading (and discarding) the rest of a
    # refused body to keep the connection alive: measured, it read all 30 MB of a body refused at 1 MB.
    return _error(exc.status, exc.error, exc.reason, exc.detail, {"Connection": "close"})


def _aggregation_error(aggregate: Any) -> JSONResponse | None:
    """A 400 for an aggregation rule that does not exist; None for a known one or none."""
    if aggregate is None or (isinstance(aggregate, str) and aggregate in list_aggregations()):
        return None
    return _error(400, f"unknown aggregation '{str(aggregate)[:50]}'", "bad_request", ", ".join(list_aggregations()))


def _explain_refusal(cfg: ServeParams, ctype: str) -> JSONResponse | None:
    """Why an `explain=1` request is refused before anything is read (off here, or not one uploaded file)."""
    if not cfg.explain:
        return _error(403, "explanations are off on this server", "explain_off",
                      "serve.explain: true turns them on (heatmaps cost a backward pass per member)",
                      {"Connection": "close"})
    if not ctype.startswith("multipart/form-data"):
        return _error(400, "explain=1 explains one uploaded file", "bad_request",
                      "send multipart/form-data with a `file` field (path lists are not explained)",
                      {"Connection": "close"})
    return None


def _crops_only() -> JSONResponse:
    return _error(409, "the served model has no faces params: it scores crops only", "crops_only")


def file_result(res: MediaResult, scorer: MediaScorer, model: LoadedModel) -> tuple[int, dict[str, Any]]:
    """The one place a scored file becomes an answer: (HTTP status, body), for an upload or a path-list row."""
    body = {**res.json_row(), "threshold": scorer.threshold, "model_version": model.version}
    if res.reason in STATUS:
        return STATUS[res.reason], {**body, "error": res.detail or res.reason}
    return 200, body


# Called with each scored file's result (crops included) and the version that scored it, in a thread of the server
# process once the scoring (in a worker process or thread) has returned; returns the result.
OnResult = Callable[[MediaResult, str | None], MediaResult]


def _unobserved(res: MediaResult, version: str | None) -> MediaResult:
    return res


def create_app(holder: ModelHolder, cfg: ServeParams, token: str | list[str] | None = None,
               on_result: OnResult | None = None, insecure: bool = False,
               before_open: Callable[[Path], None] | None = None, report: ReportParams | None = None) -> FastAPI:
    """The HTTP app over `holder`'s current model.

    Args:
        holder: The model (and its alias poller).
        cfg: `serve:` params; `cfg.isolation` picks worker processes (started with the app) or threads.
        token: Accepted bearer token(s); none: a server for this machine only (loopback Host, no proxy headers).
        on_result: Sees every scored file (the traffic log's hook), in a thread of this process.
        insecure: Without a token, answer any Host (`--insecure`).
        before_open: Called with each path-list file just before it is opened (tests pause there to swap it).
        report: `report:` params (heatmap frames, face images) for `POST /predict?explain=1`.
    """
    report_cfg = report or ReportParams()
    explaining = ExplainGate(cfg)  # one explain request at a time (dfd/serving/explain.py)
    seen = on_result or _unobserved
    tokens = [token] if isinstance(token, str) else list(token or [])
    slots = ScoringSlots(cfg.max_concurrent, cfg.request_timeout_s, cfg.slot_wait_s)
    pool = (WorkerPool(cfg.max_concurrent, ModelSpec.of(holder.current, holder.tracking_uri, cfg), cfg,
                       current=lambda: ModelSpec.of(holder.current, holder.tracking_uri, cfg))
            if cfg.isolation == "process" else None)
    # Bodies being received (uploads, JSON, path-list copies) at once: each may hold its limit on disk or in memory.
    receiving = asyncio.Semaphore(2 * cfg.max_concurrent)
    roots = [Path(r).resolve() for r in cfg.path_roots]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if pool is not None:
            await pool.start()
        try:
            yield
        finally:
            slots.shutdown()
            if pool is not None:
                pool.shutdown()

    app = FastAPI(title="dfd deepfake detector", version="1", lifespan=lifespan)
    app.state.slots, app.state.pool, app.state.explaining = slots, pool, explaining
    app.add_middleware(Gate, tokens=tokens, local_only=not insecure, rate_per_minute=cfg.rate_limit_per_minute)

    async def run(model: LoadedModel, job: Callable[..., T], timeout_s: float | None,
                  on_done: Callable[[], None] | None) -> T:
        """`job(model, check)` in a worker process, or in a thread of this process (`isolation: thread`); `on_done`
        once it has stopped (a worker past its timeout is killed before `pool.run` returns)."""
        if pool is not None:
            try:
                return await pool.run(job, ModelSpec.of(model, holder.tracking_uri, cfg), timeout_s)
            finally:
                if on_done is not None:
                    on_done()
        return await slots.run(lambda check: job(model, check), timeout_s, on_done)

    async def scored(model: LoadedModel, job: Callable[..., T], timeout_s: float | None = None,
                     on_done: Callable[[], None] | None = None) -> T | JSONResponse:
        """The job's result, or the answer that says why there is none (busy, timed out, over a limit)."""
        try:
            return await run(model, job, timeout_s, on_done)
        except SlotsBusy:
            return _error(503, "every scoring slot is busy", "busy", f"waited {cfg.slot_wait_s} s",
                          {"Retry-After": str(max(1, round(cfg.slot_wait_s)))})
        except TimeoutError:
            return _error(504, "scoring timed out", "timeout", f"over {timeout_s or cfg.request_timeout_s} s")
        except WorkerFailed as exc:
            return _error(413 if exc.reason == "too_large" else 500, "scoring failed", exc.reason, exc.detail)

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

    async def receive(request: Request, limit: int) -> Any:
        """A JSON body within `limit`, the receive timeout and the receiving slots (as an upload)."""
        async with receiving:
            try:
                return await asyncio.wait_for(receive_json(request, limit), cfg.request_timeout_s)
            except TimeoutError:
                raise BodyError(408, "body too slow", "timeout", f"not received in {cfg.request_timeout_s} s"
                                ) from None

    @app.post("/predict")
    async def predict(request: Request, aggregate: str | None = None, explain: bool = False) -> Any:
        ctype = request.headers.get("content-type", "").lower()
        if explain and (refused := _explain_refusal(cfg, ctype)) is not None:
            return refused
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
        ticket = None
        try:
            # The receiving slot is held until scored: it bounds the uploads on disk, waiting ones included.
            async with receiving:
                # The gate is entered with a receiving slot in hand: from then on it is held for at most the
                # receive timeout, the slot wait and the explain timeout (what Retry-After counts down).
                if explain and (ticket := explaining.enter()) is None:  # refused before its body is read
                    return _error(503, "another explain request is being answered", "explain_busy",
                                  "one explain request at a time (serve.explain)",
                                  {"Retry-After": str(explaining.retry_after_s()), "Connection": "close"})
                with tempfile.TemporaryDirectory(prefix="dfd-upload-") as tmp:
                    try:
                        up = await asyncio.wait_for(receive_upload(request, Path(tmp), cfg.max_upload_bytes),
                                                    cfg.request_timeout_s)
                    except BodyError as exc:
                        return _refused(exc)
                    except TimeoutError:
                        return _error(408, "upload too slow", "timeout",
                                      f"not received in {cfg.request_timeout_s} s", {"Connection": "close"})
                    if ticket is None:
                        res = await scored(model, partial(jobs.score_upload, path=up.path, name=up.filename,
                                                          aggregate=aggregate, cfg=cfg))
                    else:  # threads: the gate stays closed until a timed-out explain has actually stopped
                        res = await scored(model, partial(explain_upload, path=up.path, name=up.filename,
                                                          aggregate=aggregate, cfg=cfg, report=report_cfg),
                                           cfg.explain_timeout_s, ticket.hand_over() if pool is None else None)
        finally:
            if ticket is not None and not ticket.handed:
                ticket.release()
        if isinstance(res, JSONResponse):
            return res
        if ticket is not None:  # the report's content (dfd/serving/report.py), and the error of a refused file
            res, content = res
            status, body = file_result(await asyncio.to_thread(seen, res, model.version), scorer, model)
            return JSONResponse({**content, **({"error": body["error"]} if "error" in body else {})},
                                status_code=status)
        status, body = file_result(await asyncio.to_thread(seen, res, model.version), scorer, model)
        return JSONResponse(body, status_code=status)

    async def predict_paths(request: Request) -> Any:
        """`{"paths": [...], "aggregate": ...}`: files on the server's disk, under `serve.path_roots` only."""
        if not roots:
            return _error(403, "path lists are off on this server", "forbidden",
                          "upload the file, or list the folders it may read in serve.path_roots")
        try:
            paths, aggregate = parse_paths(await receive(request, cfg.max_path_json_bytes), cfg.max_paths)
            if (bad := _aggregation_error(aggregate)) is not None:
                return bad
            if far := await asyncio.to_thread(drop_folders.outside, paths, roots):
                return _error(403, "paths outside serve.path_roots", "forbidden", ", ".join(far[:5])[:500])
        except BodyError as exc:
            return _refused(exc)
        model = holder.current
        scorer = model.python_model.scorer
        if scorer is None:
            return _crops_only()
        # The copies are bodies too (up to max_path_bytes on disk): held in a receiving slot until scored.
        async with receiving:
            with tempfile.TemporaryDirectory(prefix="dfd-paths-") as tmp:
                try:
                    files = await asyncio.to_thread(drop_folders.copy_in, paths, roots, Path(tmp),
                                                    cfg.max_upload_bytes, cfg.max_path_bytes, before_open)
                except BodyError as exc:
                    return _refused(exc)
                results = await scored(model, partial(jobs.score_paths, files=files, aggregate=aggregate,
                                                      cfg=cfg))
        if isinstance(results, JSONResponse):
            return results
        results = [await asyncio.to_thread(seen, res, model.version) for res in results]
        rows = [file_result(res, scorer, model)[1] | {"path": p} for p, res in zip(paths, results, strict=True)]
        return {"results": rows, "threshold": scorer.threshold, "model_version": model.version}

    @app.post("/invocations")
    async def invocations(request: Request) -> Any:
        try:
            payload = await receive(request, cfg.max_json_bytes)
            crops = await asyncio.to_thread(parse_crops, payload, cfg.max_crops, cfg.max_crop_side)
        except BodyError as exc:
            return _refused(exc)
        model = holder.current
        scores = await scored(model, partial(jobs.predict_crops, crops=crops))
        if isinstance(scores, JSONResponse):
            return scores
        return {"predictions": np.asarray(scores, dtype=float).tolist()}

    return app


def serve(uri: str, tracking_uri: str, cfg: ServeParams, host: str = "127.0.0.1", port: int = 8000,
          insecure: bool = False, on_result: OnResult | None = None, report: ReportParams | None = None) -> None:
    """Check the exposure rules, load the model, start the alias poller, and serve until interrupted.

    `on_result` sees every scored file (the traffic log's hook); `report` shapes explain answers. uvicorn's access
    log is off: it would record every client's address and path (the traffic log records what a team needs,
    without them).

    Raises:
        DfdError: A non-loopback `host` without a token in `$cfg.auth_token_env` or `$cfg.auth_tokens_env`
            (unless `insecure`), or a short token: before anything is loaded.
    """
    import uvicorn

    tokens = tokens_from_env(cfg.auth_token_env, cfg.auth_tokens_env)
    check_exposure(host, tokens[0] if tokens else None, insecure, cfg.auth_token_env)
    holder = ModelHolder(uri, tracking_uri, partial(load, precision=cfg.precision,
                                                   max_precision_error=cfg.max_precision_error, engine=cfg.engine))
    holder.start(cfg.poll_interval_s)
    log.info("serving %s (version %s) on http://%s:%d, %s", uri, holder.current.version, host, port,
             f"{len(tokens)} token(s)" if tokens else "no token: this machine only")
    try:
        uvicorn.run(create_app(holder, cfg, tokens, on_result, insecure=insecure, report=report), host=host, port=port,
                    log_level="info", access_log=False)
    finally:
        holder.stop()
