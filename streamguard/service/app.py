"""The ASGI app: REST for streams, a websocket per stream for questions, /metrics, /healthz.

`create_app(settings)` builds one service instance; its lifespan loads the backbone (once per
process, unless one is passed in), starts the inference worker, and on shutdown deletes every
stream and joins the worker. `server_config` is how uvicorn runs it (the transport's limits).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Body, FastAPI, Query, Request, WebSocket
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from streamguard.backbones import Backbone, load_backbone
from streamguard.cluster import Heartbeat, open_store
from streamguard.cluster.routing import Router
from streamguard.cluster.takeover import TakeOver
from streamguard.config import ServiceSettings, Settings
from streamguard.engine.scheduler import Scheduler
from streamguard.ingest.webrtc import MAX_SDP_BYTES
from streamguard.service.auth import authenticate, check_origin, presented_token
from streamguard.service.connection import Connection, refuse
from streamguard.service.cors import ApiCors
from streamguard.service.deps import ERROR_RESPONSES, Authenticated, Cluster, Registry
from streamguard.service.drain import Drain
from streamguard.service.headers import SecurityHeaders
from streamguard.service.limits import BodyLimit
from streamguard.service.logs import event
from streamguard.service.metrics import ServiceMetrics
from streamguard.service.protocol import (
    AnswerLog,
    CreateStreamRequest,
    ErrorCode,
    RtspStreamRequest,
    ServiceError,
    ServiceStats,
    StreamInfo,
    StreamList,
    Viewer,
    describe_errors,
    protocol_schema,
    validation_code,
)
from streamguard.service.remote import ClusterStreams
from streamguard.service.streams import StreamRegistry, open_source, unknown_stream
from streamguard.service.webrtc import router as webrtc

WEB_CLIENT_DIR = Path(__file__).resolve().parents[1] / "web"  # clients/web, shipped as package data

api = APIRouter(prefix="/v1", tags=["streams"], responses=ERROR_RESPONSES)


@api.post(
    "/streams",
    status_code=201,
    response_model=StreamInfo,
    responses={307: {"description": "this worker is full: the same request to a worker with room"}},
)
async def create_stream(
    body: Annotated[CreateStreamRequest, Body()],
    caller: Authenticated,
    registry: Registry,
    cluster: Cluster,
    request: Request,
) -> StreamInfo | Response:
    """Start a stream from an RTSP camera, or from a file on the server when enabled. A full
    worker sends the request on (307) to a worker of the cluster with room."""
    source, kind, description = await open_source(body, registry.settings)
    # a camera's full URL lets another worker reopen it should this one die
    reopen_url = body.url if isinstance(body, RtspStreamRequest) else None
    try:
        stream = await registry.open(kind, source, description, caller.owner, reopen_url=reopen_url)
    except ServiceError as refused:
        return await cluster.elsewhere(refused, request)
    return stream.info()


@api.get("/streams")
async def list_streams(caller: Authenticated, cluster: Cluster) -> StreamList:
    """The streams the token may see (a user token: those it opened; an admin token: all), on
    every worker of the cluster."""
    streams = await cluster.list(caller)
    viewer = Viewer(name=caller.name, role=caller.role, sees_all_streams=caller.sees_all_streams)
    return StreamList(streams=streams, viewer=viewer)


@api.get("/streams/{stream_id}")
async def get_stream(stream_id: str, caller: Authenticated, cluster: Cluster) -> StreamInfo:
    """The stream, whichever worker of the cluster holds it."""
    return await cluster.info(caller, stream_id)


@api.delete("/streams/{stream_id}")
async def delete_stream(stream_id: str, caller: Authenticated, cluster: Cluster) -> StreamInfo:
    """Stop the stream and free its cache, whichever worker holds it; returns its final stats."""
    return await cluster.delete(caller, stream_id)


@api.get("/streams/{stream_id}/answers")
async def stream_answers(
    stream_id: str,
    caller: Authenticated,
    registry: Registry,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> AnswerLog:
    """The stream's latest questions and answers, oldest first (also after it was deleted)."""
    record = await registry.store.get_stream(stream_id)
    if record is None or not caller.may_see(record.owner):
        raise unknown_stream(stream_id)
    return AnswerLog(stream=record, answers=await registry.store.answers(stream_id, limit))


@api.get("/stats")
async def service_stats(_: Authenticated, registry: Registry) -> ServiceStats:
    """This worker's totals: every stream it has run, deleted ones included (the queue depth
    and KV cache figures are of the streams it holds now)."""
    return registry.totals()


@api.websocket("/streams/{stream_id}/ws")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    """Questions and stats of one stream; see `streamguard.service.protocol` for the messages.
    Refusals send an `error` event, then close with 4000 + the HTTP status (4401, 4403, 4404);
    a deleted stream closes with 4410, a client that does not read its events with 4429. A
    stream another worker holds is served from there (`remote.ClusterStreams.relay`); should that
    worker die, an `error` event (`stream_lost`) and close 4503."""
    await websocket.accept()
    state = websocket.app.state
    try:
        check_origin(state.settings.service, websocket.headers.get("origin"))
        caller = authenticate(
            state.settings.service,
            presented_token(websocket.headers.get("authorization"), websocket.query_params.get("token")),
        )
        cluster: ClusterStreams = state.cluster
        stream = cluster.local(caller, stream_id)
        if stream is None:
            await cluster.relay(websocket, caller, stream_id)
            return
    except ServiceError as error:
        await refuse(websocket, error)
        return
    await Connection(websocket, stream, state.settings.service, state.registry.store, state.metrics).serve()


ops = APIRouter(tags=["operations"])


@ops.post("/v1/admin/drain", status_code=202, responses=ERROR_RESPONSES)
async def drain_worker(request: Request, caller: Authenticated) -> dict[str, Any]:
    """Drain this worker as SIGTERM does (an admin token): no new stream, its cameras handed to
    other workers at once, its clients told (`stream.moved`, `stream.ending`), then it exits."""
    if not caller.sees_all_streams:
        raise ServiceError("admin_only", "draining a worker takes an admin token", status=403)
    drain: Drain = request.app.state.drain
    drain.start()
    return {"draining": True, "worker": request.app.state.registry.worker}


@ops.get("/metrics", responses=ERROR_RESPONSES)
async def metrics(request: Request, caller: Authenticated, registry: Registry) -> Response:
    """Prometheus text exposition (scrape it with the bearer token): every stream's series for an
    admin token, the caller's own streams' for a user token; the service-wide series for both."""

    def shows_stream(stream_id: str) -> bool:
        stream = registry.find(stream_id)
        return stream is not None and caller.may_see(stream.owner)

    shows = None if caller.sees_all_streams else shows_stream
    return Response(request.app.state.metrics.exposition(shows), media_type=CONTENT_TYPE_LATEST)


@ops.get("/v1/protocol.json")
async def protocol() -> dict[str, Any]:
    """The websocket protocol as versioned JSON Schema, generated from the service's own message
    models (`streamguard.service.protocol`). Describes; starts nothing: no token."""
    return protocol_schema()


@ops.get("/healthz")
async def healthz(request: Request, response: Response) -> dict[str, Any]:
    """`ok`, `degraded` while Redis is away and the service runs from memory, or `down` (HTTP
    503) once the inference worker thread is gone; this needs no token. With a valid token also
    the store (and why it is not up) and the worker's load."""
    registry: StreamRegistry = request.app.state.registry
    store = registry.store.health()
    worker = registry.scheduler.stats()
    if worker.alive:
        status = "ok" if store.up else "degraded"
    else:
        status, response.status_code = "down", 503
    try:
        authenticate(registry.settings.service, presented_token(request.headers.get("authorization")))
    except ServiceError:  # the Redis host and the worker's name are not for everyone
        return {"status": status}
    return {
        "status": status,
        "store": asdict(store),
        "worker": asdict(worker),
    }


def create_app(
    settings: Settings, backbone: Backbone | None = None, *, chunk_delay_s: float | None = None
) -> FastAPI:
    """One service instance. `chunk_delay_s` is the scheduler's test hook (see
    `streamguard.engine.scheduler`); None takes env `STREAMGUARD_TEST_CHUNK_DELAY_S`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # first: an unreachable Redis fails the start before a model loads
        async with contextlib.aclosing(await open_store(settings.cluster)) as store:
            model = backbone or await asyncio.to_thread(load_backbone, settings.model, settings.chunk)
            scheduler = Scheduler(
                settings.service.max_pending_chunks,
                chunk_delay_s,
                max_questions_per_stream=settings.service.max_questions_per_stream,
                engine=settings.engine,
            )
            scheduler.start()
            registry = StreamRegistry(settings, model, scheduler, app.state.metrics, store)
            app.state.registry = registry
            cluster = ClusterStreams(registry, app.state.metrics)
            app.state.cluster = cluster
            if settings.cluster.redis_url:  # other workers exist only with a shared store
                cluster.take_over = TakeOver(
                    store,
                    settings.cluster.lease_ttl_s,
                    lambda stream_id: registry.find(stream_id) is not None,
                    registry.has_room,
                    registry.continue_camera,
                )
                cluster.take_over.start()
                cluster.router = Router(
                    settings.cluster, store.worker, cluster.handle_call, cluster.serve_socket, registry.room
                )
                cluster.router.start()
            announce = cluster.router.advertise if cluster.router is not None else None
            drain = Drain(registry, cluster.hand_over, settings.cluster.drain_timeout_s, announce)
            app.state.drain = drain
            restore_sigterm = drain.on_sigterm()
            heartbeat = Heartbeat(
                store, registry.active_streams, registry.lease_lost, settings.cluster.lease_ttl_s / 3
            )
            heartbeat.start()
            event("service.ready", model=model.model_id, device=str(model.device))
            try:
                yield
            finally:
                restore_sigterm()
                await heartbeat.stop()
                if cluster.router is not None:
                    await cluster.router.stop()
                if cluster.take_over is not None:
                    await cluster.take_over.stop()
                await registry.close()
                await scheduler.stop()
                event("service.stopped")

    app = FastAPI(
        title="StreamGuard",
        summary="Questions about live audio-video streams, answered from a rolling KV cache",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)

    def cluster_origins() -> frozenset[str]:  # the cluster is known once the lifespan started
        cluster: ClusterStreams | None = getattr(app.state, "cluster", None)
        return cluster.origins() if cluster is not None else frozenset()

    def cors_origins() -> Collection[str]:
        configured = settings.service.cors_origins
        return cluster_origins() if configured is None else configured

    app.add_middleware(BodyLimit, limit_for=lambda path: body_limit(settings.service, path))
    app.add_middleware(SecurityHeaders, workers=cluster_origins)
    app.add_middleware(ApiCors, allowed=cors_origins)
    app.include_router(api)
    app.include_router(webrtc)
    app.include_router(ops)
    mount_web_client(app)
    return app


def server_config(
    app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> uvicorn.Config:
    """How uvicorn runs `app` (one built by `create_app`): its lifespan required (a startup that
    fails stops the server), and the transport's limits."""
    settings: Settings = app.state.settings
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        ws_max_size=ws_message_limit(settings.service),
    )


def ws_message_limit(settings: ServiceSettings) -> int:
    """The largest websocket message the transport takes in (uvicorn's `ws_max_size`); a larger
    one closes the socket (1009) before it is buffered. Twice `max_message_bytes`, so a message
    a little over the app's own limit still gets a `message_too_large` error and the socket lives."""
    return 2 * settings.max_message_bytes


def mount_web_client(app: FastAPI) -> None:
    """The browser pages (clients/web): the webcam page at `/`, the operator dashboard at
    `/dashboard`; without them `/` shows the API docs. Mounted last: a mount at `/` takes every
    path no route claimed."""
    if (WEB_CLIENT_DIR / "index.html").is_file():

        @app.get("/dashboard", include_in_schema=False)
        async def dashboard() -> FileResponse:
            return FileResponse(WEB_CLIENT_DIR / "dashboard.html")

        app.mount("/", StaticFiles(directory=WEB_CLIENT_DIR, html=True), name="web")
        return

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/docs")


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def body_limit(settings: ServiceSettings, path: str) -> int:
    """The largest request body a route takes: `max_body_bytes`, and for a WebRTC offer what
    its SDP limit needs (JSON escaping at most doubles it), so no SDP is read whole before it
    is checked."""
    if path == "/v1/streams/webrtc":
        return min(settings.max_body_bytes, 2 * MAX_SDP_BYTES + 1024)
    return settings.max_body_bytes


async def _http_error(request: Request, exc: Exception) -> Response:
    """A body cut off at its limit (413), or one that could not be parsed (400: too deeply
    nested JSON, not UTF-8), in the service's error format; other HTTP errors as FastAPI sends them."""
    assert isinstance(exc, HTTPException)
    if exc.status_code not in (400, 413):
        return await http_exception_handler(request, exc)
    code: ErrorCode = "request_too_large" if exc.status_code == 413 else "invalid_request"
    error = ServiceError(code, str(exc.detail), status=exc.status_code)
    return JSONResponse(error.body(), status_code=error.status)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    error = ServiceError(validation_code(errors), describe_errors(errors), status=422)
    return JSONResponse(error.body(), status_code=error.status)
