"""The app factory and its routes: glue between HTTP and the switchboard.

Request flow (one turn): auth from the header, before the body is read -> bounded body read ->
`Runtime.admit` (503 at once when loading, draining, full or dead) -> `Switchboard.parse` ->
`Switchboard.admit_call` (503 for a new call above the new-call level) -> `Switchboard.plan`
(prompt tokens, the engine's validated sampling values) -> `Switchboard.start` (the call's one
open turn) -> a response object that iterates the engine inside the response body. Every refusal
happens before that, and is counted by `Runtime.refused`. When the caller hangs up, Starlette
cancels the body, and the turn's `finally` aborts the engine request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from server import __version__
from server.app.responses import (
    Completion,
    PlainStream,
    SseStream,
    error_response,
    read_body,
    request_id,
)
from server.base.errors import (
    CallgateError,
    ClientGone,
    EngineFailed,
    NotFound,
    Unauthorized,
    framework_error,
)
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.engine.adapters import resolve as resolve_adapters
from server.serving.admission import Admission
from server.serving.calls import classify
from server.serving.lifecycle import EngineFactory, Runtime
from server.serving.metrics import Metrics
from server.wire.auth import Authenticator
from server.wire.schemas import ChatRequest

log = logging.getLogger("callgate")

CHAT_PATHS = ("/", "/chat/completions", "/v1/chat/completions")


def create_app(
    settings: Settings,
    codes: list[str],
    *,
    engine_factory: EngineFactory,
    registry: CollectorRegistry | None = None,
    admission: Admission | None = None,
    peers_ready: Callable[[], bool] | None = None,
    adapters: Adapters | None = None,
    warms: bool = True,
    on_warmed: Callable[[], None] | None = None,
) -> FastAPI:
    """The app of one front-end process, on the engine `engine_factory` makes (vLLM's, handed in
    by `python -m server`; a scripted one in tests). With several workers, each has its own app,
    `engine_factory` connects to the shared engine core and `admission` is the shared count.
    `adapters`: the aliases' LoRA adapters as resolved at start-up (default: resolved now).
    `warms`: this process warms the engine's prefix cache before it is ready (with several
    workers only one does), then calls `on_warmed`."""
    metrics = Metrics(registry or CollectorRegistry(auto_describe=True))
    metrics.declare(list(settings.models.aliases))
    if adapters is None:
        adapters = resolve_adapters(settings.models.aliases, settings.engine.extra)
    runtime = Runtime(
        settings, metrics, engine_factory, admission, peers_ready, adapters, warms, on_warmed
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.begin()
        yield
        await runtime.close_hangups()
        runtime.close()

    docs = settings.server.docs
    app = FastAPI(
        title="callgate",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.runtime = runtime
    app.state.auth = Authenticator(codes)
    app.state.metrics = metrics
    _routes(app, settings)
    _error_handlers(app)
    return app


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _on_admin_port(request: Request, settings: Settings) -> bool:
    """Whether the request came in on `server.admin_port` (metrics only)."""
    local: tuple[str, int | None] = request.scope.get("server") or ("", None)
    return settings.server.admin_port is not None and local[1] == settings.server.admin_port


def _routes(app: FastAPI, settings: Settings) -> None:
    stream_class = SseStream if settings.server.sse == "sse-starlette" else PlainStream
    body_schema = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
        }
    }

    async def chat(request: Request, runtime: RuntimeDep) -> Response:
        arrival = time.perf_counter()
        rid = request_id(request.headers.get("x-request-id"))
        model, session, call = "", None, None
        try:
            if _on_admin_port(request, settings):
                raise NotFound("no such route on this port")
            if not request.app.state.auth.check(request.headers.get("authorization")):
                raise Unauthorized("missing or wrong Authorization code")
            body = await read_body(request, settings.server.max_body_bytes)
            # Admitted before the parse: a full server says 503 without paying for the body.
            # (After the read: a slow sender must not hold a slot for `body_timeout_s`.)
            board = runtime.admit()
            try:
                req = await board.parse(body)
                model, session = req.model, req.session_id
                # Then by kind: past the new-call level only calls in progress get in.
                call = classify(req.messages)
                board.admit_call(call)
                plan = await board.plan(req, rid, arrival, call)
            except BaseException:
                board.unadmit()
                raise
        except ClientDisconnect:
            gone = ClientGone("the client left while sending the body")
            runtime.refused(gone, rid, model, arrival, session, call)
            return Response(status_code=gone.status)
        except CallgateError as err:
            runtime.refused(err, rid, model, arrival, session, call)
            return error_response(err, rid)
        except Exception:
            log.exception("request %s failed before streaming", rid)
            failure = EngineFailed("internal error while preparing the turn")
            runtime.refused(failure, rid, model, arrival, session, call)
            return error_response(failure, rid)
        turn = board.start(plan)
        headers = {"X-Request-Id": rid}
        if req.stream:
            return stream_class(turn, ping_s=settings.server.sse_ping_s, headers=headers)
        return Completion(turn, headers=headers)

    for path in CHAT_PATHS:
        app.add_api_route(
            path, chat, methods=["POST"], openapi_extra=body_schema, response_class=Response
        )

    @app.get("/health")
    async def health(runtime: RuntimeDep) -> JSONResponse:
        """Liveness: the engine is up (503 while loading and once it has died)."""
        up = runtime.alive
        return JSONResponse({"status": "ok" if up else runtime.state}, 200 if up else 503)

    @app.get("/ready")
    async def ready(runtime: RuntimeDep) -> JSONResponse:
        """Readiness: send turns here (503 while loading, draining, stalled or dead)."""
        ok, why = runtime.readiness()
        return JSONResponse({"status": why}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request, runtime: RuntimeDep) -> Response:
        """Ours and vLLM's metrics; OpenMetrics (with exemplars) when the scraper asks for it.
        With `server.admin_port`, only there."""
        if settings.server.admin_port is not None and not _on_admin_port(request, settings):
            missing = NotFound("no route for GET /metrics on this port")
            return error_response(missing, request_id(None))
        if settings.auth.protect_metrics and not request.app.state.auth.check(
            request.headers.get("authorization")
        ):
            err = Unauthorized("missing or wrong Authorization code")
            return error_response(err, request_id(None))
        body, content_type = await runtime.metrics.scrape(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)


def _error_handlers(app: FastAPI) -> None:
    """Framework errors (unknown path, wrong method) in the same JSON shape as ours, with a
    fixed message (`framework_error`): the caller's path and method are not echoed."""

    async def http_error(request: Request, exc: Any) -> Response:
        rid = request_id(request.headers.get("x-request-id"))
        return error_response(framework_error(getattr(exc, "status_code", 500)), rid)

    app.add_exception_handler(StarletteHTTPException, http_error)
