"""The cluster's streams as one service: what the API asks of a stream another worker holds goes
to that worker through `cluster.routing.Router`; with the in-memory store (one worker) there is
no router and every stream is this worker's.

A caller sees another worker's stream as it would its own: the record in the shared store
names the stream's owner (the token digest), checked here before anything is forwarded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse, Response
from redis.exceptions import RedisError

from streamguard.cluster.routing import CallFailedError, RemoteSocket, Router, WorkerUnavailableError
from streamguard.cluster.takeover import TakeOver
from streamguard.service.auth import Caller
from streamguard.service.connection import Connection, refuse
from streamguard.service.cors import origin_of
from streamguard.service.logs import event
from streamguard.service.metrics import ServiceMetrics
from streamguard.service.protocol import ServiceError, StreamInfo
from streamguard.service.streams import Stream, StreamRegistry, unknown_stream
from streamguard.vocabulary import REDIRECT_HEADER, WORKER_URL_HEADER, StreamRecord

ADOPT_TIMEOUT_S = 10.0  # how long a draining worker waits for one other worker to take a camera


class ClusterStreams:
    def __init__(self, registry: StreamRegistry, metrics: ServiceMetrics):
        self.registry = registry
        self.metrics = metrics
        self.router: Router | None = None  # set, with `take_over`, once the service has Redis
        self.take_over: TakeOver | None = None

    def local(self, caller: Caller, stream_id: str) -> Stream | None:
        """This worker's stream, if the caller may see it (another token's is as absent as none)."""
        stream = self.registry.find(stream_id)
        return stream if stream is not None and caller.may_see(stream.owner) else None

    async def info(self, caller: Caller, stream_id: str) -> StreamInfo:
        stream = self.local(caller, stream_id)
        if stream is not None:
            return stream.info()
        worker = await self.holder(caller, stream_id)
        return StreamInfo.model_validate(await self._call(worker, "info", stream_id))

    async def delete(self, caller: Caller, stream_id: str) -> StreamInfo:
        stream = self.local(caller, stream_id)
        if stream is not None:
            return await self.registry.delete(stream.id)
        worker = await self.holder(caller, stream_id)
        return StreamInfo.model_validate(await self._call(worker, "delete", stream_id))

    async def list(self, caller: Caller) -> list[StreamInfo]:
        """Every stream of the cluster the caller may see: this worker's, then each live
        worker's (a worker that does not answer within a lease TTL is left out)."""
        streams = [stream.info() for stream in self.registry.all() if caller.may_see(stream.owner)]
        if self.router is None:
            return streams
        workers = await self.router.workers()
        replies = await asyncio.gather(
            *(self.router.call(worker, "list", {}) for worker in workers), return_exceptions=True
        )
        for worker, reply in zip(workers, replies, strict=True):
            if isinstance(reply, BaseException):
                event("cluster.list_failed", logging.WARNING, worker=worker, error=str(reply))
                continue
            streams += [StreamInfo.model_validate(s["info"]) for s in reply if caller.may_see(s["owner"])]
        return streams

    async def holder(self, caller: Caller, stream_id: str) -> str:
        """The other live worker that holds a stream the caller may see, else `unknown_stream`."""
        record: StreamRecord | None = None
        if self.router is not None:
            record = await self.registry.store.get_stream(stream_id)
        if (
            self.router is None
            or record is None
            or not caller.may_see(record.owner)
            or record.worker == self.registry.worker
            or not await self.router.alive(record.worker)
        ):
            raise unknown_stream(stream_id)
        return record.worker

    async def _call(self, worker: str, op: str, stream_id: str) -> Any:
        assert self.router is not None  # `holder` found the worker through it
        try:
            return await self.router.call(worker, op, {"stream": stream_id})
        except CallFailedError as exc:
            raise ServiceError(exc.code, exc.message, status=exc.status) from None  # type: ignore[arg-type]
        except WorkerUnavailableError as exc:
            raise ServiceError("worker_unavailable", str(exc), status=503) from None

    async def relay(self, websocket: WebSocket, caller: Caller, stream_id: str) -> None:
        """An accepted socket for a stream another worker holds, served from there."""
        worker = await self.holder(caller, stream_id)
        assert self.router is not None
        event("connection.forwarded", stream=stream_id, worker=worker)
        await self.router.relay(websocket, worker, stream_id)

    # -- the owner's side: what other workers ask of this one ------------------------------------

    def origins(self) -> frozenset[str]:
        """The origins of the cluster's workers, this one included, as they advertise them
        (`cluster.public_url`): pages served by any of them may call any of them."""
        urls = {self.registry.settings.cluster.public_url}
        if self.router is not None:
            urls |= self.router.peer_urls
        return frozenset(origin_of(url) for url in urls if url)

    async def elsewhere(self, refused: ServiceError, request: Request) -> Response:
        """A request this full worker refused, sent on (307, method and body kept) to the live
        worker with the most room; the refusal itself when no worker has room. A client that
        follows placement itself (`StreamGuard-Redirect: manual`, the browser page) gets the
        refusal naming the target instead (see `vocabulary.REDIRECT_HEADER`)."""
        if refused.code != "service_full" or self.router is None:
            raise refused
        try:
            url = await self.router.place()
        except (RedisError, OSError):
            url = None
        if url is None:
            raise refused
        target = url.rstrip("/") + request.url.path
        event("stream.redirected", to=url)
        headers = {WORKER_URL_HEADER: target}
        if request.headers.get(REDIRECT_HEADER, "").lower() == "manual":
            return JSONResponse(refused.body(worker_url=target), status_code=refused.status, headers=headers)
        return RedirectResponse(target, status_code=307, headers=headers)

    async def hand_over(self, stream_id: str) -> str | None:
        """Offer a camera this worker let go of to each other live worker in turn: the one that
        took it over, or None when none could (it stays claimable)."""
        if self.router is None:
            return None
        try:
            workers = await self.router.workers()
        except (RedisError, OSError) as exc:
            event("stream.hand_over_failed", logging.WARNING, stream=stream_id, error=str(exc))
            return None
        for worker in workers:
            try:  # a take-over opens the camera's pipeline: allow it more than a lease
                if await self.router.call(worker, "adopt", {"stream": stream_id}, timeout_s=ADOPT_TIMEOUT_S):
                    return worker
            except (CallFailedError, WorkerUnavailableError) as exc:
                event(
                    "stream.hand_over_failed",
                    logging.WARNING,
                    stream=stream_id,
                    worker=worker,
                    error=str(exc),
                )
        return None

    async def handle_call(self, op: str, args: dict[str, Any]) -> Any:
        if op == "adopt":
            return self.take_over is not None and await self.take_over.adopt(args["stream"])
        if op == "list":
            return [{"owner": s.owner, "info": s.info().model_dump(mode="json")} for s in self.registry.all()]
        try:
            stream = self.registry.get(args["stream"])
            if op == "info":
                return stream.info().model_dump(mode="json")
            if op == "delete":
                return (await self.registry.delete(stream.id)).model_dump(mode="json")
        except ServiceError as error:
            raise CallFailedError(error.code, error.message, error.status) from None
        raise CallFailedError("invalid_request", f"unknown call {op!r}", 400)

    async def serve_socket(self, stream_id: str, socket: RemoteSocket) -> None:
        """A websocket another worker forwards: the ordinary connection over Redis."""
        settings = self.registry.settings.service
        try:
            stream = self.registry.get(stream_id)
        except ServiceError as error:
            await refuse(socket, error)
            return
        await Connection(socket, stream, settings, self.registry.store, self.metrics).serve()
