"""One stream's websocket: questions in, answer deltas and live stats out, reconnected on drops.

Every client event is sent with an `event_id`, which the service echoes in the error it causes.
A single reader task receives every event and routes it: a question's deltas, its `answer.done`
and its errors to that question's queue, `stream.stats` (and a refused subscription) to every
stats subscriber, `stream.updated` or the error with its `event_id` to the update that awaits it. When the connection drops (not a refusal, not a deleted stream),
the reader reconnects with backoff and subscribes to stats again; questions that were being
answered end with `ConnectionLostError` (the service cancels an answer whose socket went away).
A refusal (no or a wrong token, an unknown stream) or a deleted stream ends the socket for good:
everything waiting on it raises the service's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from streamguard_client.backoff import Backoff
from streamguard_client.errors import (
    ConnectionLostError,
    ServiceError,
    StreamGuardError,
    UnreachableError,
    error_from,
)

log = logging.getLogger(__name__)

# Close codes after which reconnecting cannot help: 4000 + the HTTP status of a refusal
# (missing or wrong token, unknown stream), or the stream was deleted or expired (4410).
FINAL_CLOSE_CODES = frozenset({4401, 4403, 4404, 4410})
STATS_BACKLOG = 16  # stats a slow subscriber may fall behind; older ones are dropped


class Answer:
    """One question's answer. Iterate it (once) for the text deltas as the model decodes them;
    afterwards `text` is the whole answer, `stats` the service's figures (`generated_tokens`,
    `time_to_first_delta_ms`, `total_ms`, `finish_reason`, `context_tokens`), `usage` its
    tokens (`prompt_tokens`, `context_tokens`, `generated_tokens`), `recall` what it recalled
    from long memory (None without) and `done` the `answer.done` event itself. Leaving the iteration early cancels the question on the service.
    """

    def __init__(
        self,
        question_id: str,
        begin: Callable[[], Awaitable[asyncio.Queue[Any]]],
        end: Callable[[bool], Awaitable[None]],
        cancel: Callable[[], Awaitable[None]],
    ):
        self.id = question_id
        self.text = ""
        self.stats: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.recall: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None
        self._begin, self._end, self._cancel = begin, end, cancel
        self._started = False

    def __aiter__(self) -> AsyncIterator[str]:
        if self._started:
            raise RuntimeError(f"answer {self.id!r} is already being read")
        self._started = True
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        try:
            events = await self._begin()
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                if event["type"] == "answer.delta":
                    self.text += event["text"]
                    yield event["text"]
                elif event["type"] == "answer.done":
                    self.text, self.stats, self.done = event["text"], event["stats"], event
                    self.usage, self.recall = event.get("usage"), event.get("recall")
                    return
        finally:
            await self._end(self.done is not None)

    async def result(self) -> Answer:
        """Read the whole answer; returns itself, with `text` and `stats` set."""
        async for _ in self:
            pass
        return self

    async def cancel(self) -> None:
        """Ask the service to stop; the answer then ends with finish_reason `cancelled`."""
        await self._cancel()


class StreamSocket:
    """The websocket of one stream (`WS /v1/streams/{id}/ws`). Open it with `async with`.

    `reconnect=False` makes any drop final. `backoff` paces the connection attempts, the first
    one included (a service that is still starting is waited for).
    """

    def __init__(
        self,
        ws_url: str,
        token: str | None,
        stream_id: str,
        *,
        backoff: Backoff,
        reconnect: bool = True,
        open_timeout_s: float = 30.0,
    ):
        self.stream_id = stream_id
        self.reconnects = 0  # times the socket came back after a drop
        self._url = f"{ws_url}/v1/streams/{stream_id}/ws"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._backoff, self._reconnect, self._open_timeout_s = backoff, reconnect, open_timeout_s
        self._ws: ClientConnection | None = None
        self._dropped = asyncio.Event()  # the reader has judged the current connection's close
        self._reader: asyncio.Task[None] | None = None
        self._failure: StreamGuardError | None = None  # set once the socket is gone for good
        self._closing = False
        self._last_error: ServiceError | None = None  # an error no question claimed: a refusal's reason
        self._questions: dict[str, asyncio.Queue[Any]] = {}
        self._stats: set[asyncio.Queue[Any]] = set()
        self._stats_interval_s: float | None = None
        self._subscriptions: set[str] = set()  # event ids of stats.subscribe messages
        self._updates: dict[str, asyncio.Future[dict[str, Any]]] = {}  # by event id
        self._ids = itertools.count(1)

    async def __aenter__(self) -> StreamSocket:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect (retrying with backoff) and start receiving."""
        self._ws = await self._connect()
        self._reader = asyncio.create_task(self._read_all())

    async def close(self) -> None:
        """Close the socket; questions still running end with `ConnectionLostError`."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        self._fail_everything(self._failure or ConnectionLostError("the socket was closed"))

    # -- questions ----------------------------------------------------------------------------

    def ask(
        self,
        text: str,
        *,
        max_tokens: int | None = None,
        recall: str | dict[str, float] | None = None,
        question_id: str | None = None,
        own_socket: bool = False,
    ) -> Answer:
        """A question about what the stream has shown and said so far: iterate the `Answer` for
        its deltas (the question is sent when the iteration starts). `recall` ("auto", "recent"
        or `{"from": T0, "to": T1}` in stream seconds) reaches into a stream's long memory, where
        the service keeps one. With `own_socket` the
        socket lives as long as the answer: opened when it starts, closed when it ends."""
        question_id = question_id or f"q{next(self._ids)}"

        async def begin() -> asyncio.Queue[Any]:
            if own_socket:
                await self.open()
            if question_id in self._questions:
                raise ValueError(f"question {question_id!r} is already running on this socket")
            events: asyncio.Queue[Any] = asyncio.Queue()
            self._questions[question_id] = events
            ask = {
                "type": "question.ask",
                "id": question_id,
                "text": text,
                "max_tokens": max_tokens,
                "recall": recall,
            }
            try:
                await self.send(ask)
            except BaseException:
                self._questions.pop(question_id, None)
                raise
            return events

        async def end(finished: bool) -> None:
            running = self._questions.pop(question_id, None) is not None
            if running and not finished and self._failure is None:
                with contextlib.suppress(StreamGuardError, ConnectionClosed):
                    await self.cancel(question_id)
            if own_socket:
                await self.close()

        return Answer(question_id, begin, end, lambda: self.cancel(question_id))

    async def cancel(self, question_id: str) -> None:
        """Stop generating the answer to `question_id` (it ends with finish_reason `cancelled`)."""
        await self.send({"type": "question.cancel", "id": question_id})

    # -- stats ----------------------------------------------------------------------------------

    async def stats(self, interval_s: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The stream's state and stats (the body of `GET /v1/streams/{id}`) every `interval_s`
        (None: the service's default). One subscription per socket: the latest interval wins.
        A subscriber that falls behind skips to the newest."""
        backlog: asyncio.Queue[Any] = asyncio.Queue(STATS_BACKLOG)
        self._stats.add(backlog)
        self._stats_interval_s = interval_s
        try:
            await self._subscribe()
            while True:
                item = await backlog.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stats.discard(backlog)
            if not self._stats and self._failure is None and not self._closing:
                with contextlib.suppress(StreamGuardError, ConnectionClosed):
                    await self.send({"type": "stats.unsubscribe"})

    async def _subscribe(self) -> None:
        interval = self._stats_interval_s
        event_id = await self.send({"type": "stats.subscribe", "interval_s": interval})
        self._subscriptions.add(event_id)

    # -- settings -------------------------------------------------------------------------------

    async def update(
        self, *, pruning: dict[str, Any] | None = None, sampling: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Change how the stream prunes its next chunks (`method`, `rho_sem`, `rho_spa`,
        `drop_policy`) and samples questions that set nothing themselves (`max_tokens`,
        `temperature`, `top_p`). Returns the stream as it now is; the next chunk is pruned so."""
        event_id = f"update-{next(self._ids)}"
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._updates[event_id] = reply
        try:
            await self.send(
                {"type": "stream.update", "event_id": event_id, "pruning": pruning, "sampling": sampling}
            )
            return await reply
        finally:
            self._updates.pop(event_id, None)

    # -- the connection --------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> str:
        """Send one client event (None fields left out) with an `event_id` (one is made up if
        it has none); returns the event id."""
        event = {"event_id": f"event-{next(self._ids)}", **event}
        if self._failure is not None:
            raise self._failure
        if self._ws is None:
            raise RuntimeError("open the socket first (async with)")
        ws, dropped = self._ws, self._dropped
        try:
            await ws.send(json.dumps({key: value for key, value in event.items() if value is not None}))
        except ConnectionClosed as exc:
            # The reader sees the same close, after the events that came before it (a refusal's
            # error event): once it has judged the close, raise what it found.
            await dropped.wait()
            raise self._failure or ConnectionLostError(f"the socket dropped: {exc}") from None
        return event["event_id"]

    async def _connect(self) -> ClientConnection:
        delays = itertools.chain([0.0], self._backoff.delays())
        last: Exception | None = None
        for delay in delays:
            await asyncio.sleep(delay)
            try:
                return await connect(
                    self._url,
                    additional_headers=self._headers,
                    open_timeout=self._open_timeout_s,
                    max_size=None,
                )
            except InvalidStatus as exc:  # not a StreamGuard websocket at this URL: retrying cannot help
                raise UnreachableError(f"{self._url} refused the websocket: {exc}") from exc
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                last = exc
                log.info("websocket %s: %s; retrying", self._url, exc)
        raise UnreachableError(f"cannot reach {self._url}: {last}")

    async def _read_all(self) -> None:
        while True:
            assert self._ws is not None
            with contextlib.suppress(ConnectionClosed):
                async for raw in self._ws:
                    self._route(json.loads(raw))
            code, reason = self._ws.close_code, self._ws.close_reason
            if self._closing:
                self._dropped.set()
                return
            if code in FINAL_CLOSE_CODES or not self._reconnect:
                refusal = self._last_error if code in FINAL_CLOSE_CODES else None
                self._fail_everything(
                    refusal or ConnectionLostError(f"the socket closed ({code} {reason})".strip(), code)
                )
                self._dropped.set()
                return
            self._fail_questions(ConnectionLostError(f"the socket dropped ({code} {reason})", code))
            self._dropped.set()
            self._dropped = asyncio.Event()
            try:
                self._ws = await self._connect()
            except UnreachableError as exc:
                self._fail_everything(exc)
                return
            self.reconnects += 1
            log.info("websocket %s: reconnected", self._url)
            if self._stats:
                await self._subscribe()

    def _route(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("answer.delta", "answer.done"):
            questions = self._questions.get(event.get("id", ""))
            if questions is not None:
                questions.put_nowait(event)
        elif kind == "stream.stats":
            self._to_stats(event["stream"])
        elif kind == "stream.updated":
            reply = self._updates.get(event.get("event_id") or "")
            if reply is not None and not reply.done():
                reply.set_result(event["stream"])
        elif kind == "error":
            error = error_from(event)
            questions = self._questions.get(error.question_id or "")
            reply = self._updates.get(error.event_id or "")
            if questions is not None:
                questions.put_nowait(error)
            elif reply is not None and not reply.done():
                reply.set_exception(error)
            elif error.event_id in self._subscriptions:
                self._to_stats(error)
            else:
                self._last_error = error
            log.info("stream %s: %s", self.stream_id, error)

    def _to_stats(self, item: dict[str, Any] | StreamGuardError) -> None:
        for backlog in self._stats:
            if backlog.full():
                backlog.get_nowait()
            backlog.put_nowait(item)

    def _fail_questions(self, error: StreamGuardError) -> None:
        for questions in self._questions.values():
            questions.put_nowait(error)
        self._questions.clear()
        for reply in self._updates.values():
            if not reply.done():
                reply.set_exception(error)

    def _fail_everything(self, error: StreamGuardError) -> None:
        self._failure = self._failure or error
        self._fail_questions(error)
        self._to_stats(error)
