"""One websocket client of one stream: questions in, answer deltas and stats out.

A single sender task writes to the socket, so deltas of concurrent questions, stats and errors
never interleave mid-frame. Up to `MAX_OPEN_QUESTIONS` questions may run at once, each under
its own id. Events wait for the sender as JSON text, at most `MAX_OUTBOX_CHARS` of it: a client
that does not read what it asks for (the socket's buffers full, then the outbox) loses what
waits, its answers are cancelled, and the socket closes with `WS_CLOSE_SLOW_READER` (reason
`slow_reader`) once the client reads what was already on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocketDisconnect
from pydantic import BaseModel

from streamguard.cluster.routing import ClientSocket
from streamguard.cluster.store import AnswerRecord, Store
from streamguard.config import ServiceSettings
from streamguard.engine.scheduler import Answer, AnswerResult, StreamEndedError
from streamguard.engine.session import EmptyQuestionError, QuestionTooLongError
from streamguard.memory.recall import ChunkRecall
from streamguard.memory.spec import InvalidRecallError, RecallTooLargeError
from streamguard.service.auth import WS_CLOSE_OFFSET
from streamguard.service.logs import event
from streamguard.service.metrics import ServiceMetrics
from streamguard.service.protocol import (
    AnswerDelta,
    AnswerDone,
    AnswerDoneStats,
    ClientMessage,
    ErrorCode,
    ErrorEvent,
    QuestionAsk,
    QuestionCancel,
    RecallSummary,
    ServiceError,
    StatsSubscribe,
    StreamEnding,
    StreamMoved,
    StreamStatsEvent,
    StreamUpdate,
    StreamUpdated,
    Usage,
    parse_client_message,
)
from streamguard.service.streams import Stream
from streamguard.vocabulary import MEDIA_TIMEOUT

# Why an answer could not be given, as the client's error code.
_ANSWER_ERRORS: dict[type[Exception], ErrorCode] = {
    QuestionTooLongError: "question_too_long",
    EmptyQuestionError: "empty_question",
    StreamEndedError: "stream_ended",
    InvalidRecallError: "invalid_recall",  # a span that is empty at the moment it is resolved
    RecallTooLargeError: "recall_too_large",
}

WS_CLOSE_STREAM_ENDED = WS_CLOSE_OFFSET + 410
WS_CLOSE_STREAM_MOVED = WS_CLOSE_OFFSET + 307  # reason "stream_moved": its worker drained; reconnect
WS_CLOSE_SLOW_READER = WS_CLOSE_OFFSET + 429  # reason "slow_reader": the outbox overflowed
# Questions one socket may have open at once: each holds the stream's chunks back while it runs.
MAX_OPEN_QUESTIONS = 4
# JSON text waiting for one socket's sender; a client that lets more pile up is closed.
MAX_OUTBOX_CHARS = 4 * 2**20
# A stats tick is skipped while this many events still wait to be sent (a client not reading).
MAX_OUTBOX_FOR_STATS = 64


@dataclass
class _Close:
    code: int
    reason: str


async def refuse(websocket: ClientSocket, error: ServiceError) -> None:
    """An accepted socket that may not go on: the error event, then close with 4000 + status."""
    await websocket.send_text(error.event().model_dump_json())
    await websocket.close(code=WS_CLOSE_OFFSET + error.status, reason=error.code)


class Connection:
    def __init__(
        self,
        websocket: ClientSocket,  # a client's own, or one another worker forwards (`RemoteSocket`)
        stream: Stream,
        settings: ServiceSettings,
        store: Store,
        metrics: ServiceMetrics,
    ):
        self.websocket = websocket
        self.stream = stream
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._outbox: asyncio.Queue[str | _Close] = asyncio.Queue()
        self._queued_chars = 0
        self._overflowed = False
        self._answers: dict[str, Answer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        sender = asyncio.create_task(self._send_all())
        watcher = asyncio.create_task(self._close_when_removed())
        teller = asyncio.create_task(self._tell_media_timeout())
        try:
            with self.stream.watched():
                await self._receive_all()
        finally:
            for answer in self._answers.values():
                answer.cancel()  # nobody reads the rest: free the worker
            for task in [*self._tasks, self._stats, teller, watcher, sender]:
                if task is not None:
                    task.cancel()

    async def _receive_all(self) -> None:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):  # closed under us
                return
            if message["type"] == "websocket.disconnect":
                return
            if self._overflowed:  # closing: what the client still sends is not answered
                continue
            raw = message.get("text")
            try:
                parsed = parse_client_message(
                    message["bytes"] if raw is None else raw, self.settings.max_message_bytes
                )
            except ServiceError as error:
                self._send(error.event())
                continue
            try:
                await self._handle(parsed)
            except ServiceError as error:
                error.event_id = parsed.event_id
                self._send(error.event())

    def _send(self, message: BaseModel | _Close) -> None:
        if self._overflowed:
            return
        if isinstance(message, _Close):
            self._outbox.put_nowait(message)
            return
        text = message.model_dump_json()
        if self._queued_chars + len(text) > MAX_OUTBOX_CHARS:
            self._overflow()
            return
        self._queued_chars += len(text)
        self._outbox.put_nowait(text)

    def _overflow(self) -> None:
        """The client does not read: drop what waits, stop its work, close once it reads."""
        self._overflowed = True
        self.metrics.slow_readers.inc()
        event("connection.slow_reader", logging.WARNING, stream=self.stream.id, dropped=self._outbox.qsize())
        for answer in self._answers.values():
            answer.cancel()
        self._unsubscribe()
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._queued_chars = 0
        self._outbox.put_nowait(_Close(WS_CLOSE_SLOW_READER, "slow_reader"))

    async def _send_all(self) -> None:
        # a peer that is already gone ends the sender quietly; the receive loop sees it too
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                message = await self._outbox.get()
                if isinstance(message, _Close):
                    await self.websocket.close(code=message.code, reason=message.reason)
                    return
                self._queued_chars -= len(message)
                await self.websocket.send_text(message)

    async def _close_when_removed(self) -> None:
        await self.stream.removed.wait()
        farewell = self.stream.farewell  # set when the worker drains
        if isinstance(farewell, StreamMoved):
            self._send(farewell)
            self._send(_Close(WS_CLOSE_STREAM_MOVED, "stream_moved"))
            return
        if farewell is not None:
            self._send(farewell)
            self._send(_Close(WS_CLOSE_STREAM_ENDED, farewell.reason))
            return
        self._send(ErrorEvent(code="stream_ended", message=f"stream {self.stream.id} was deleted"))
        self._send(_Close(WS_CLOSE_STREAM_ENDED, "stream_ended"))

    async def _tell_media_timeout(self) -> None:
        # the stream stays (ended, answering questions), so the socket stays open
        await self.stream.media_timed_out.wait()
        self._send(StreamEnding(stream=self.stream.id, reason=MEDIA_TIMEOUT))

    # -- messages --------------------------------------------------------------------------

    async def _handle(self, message: ClientMessage) -> None:
        if isinstance(message, QuestionAsk):
            self._ask(message)
        elif isinstance(message, QuestionCancel):
            answer = self._answers.get(message.id)
            if answer is None:
                raise ServiceError(
                    "unknown_question", f"no question {message.id!r} is running", id=message.id
                )
            answer.cancel()
        elif isinstance(message, StatsSubscribe):
            self._unsubscribe()
            interval = message.interval_s or self.settings.stats_interval_s
            self._stats = asyncio.create_task(self._send_stats(interval))
        elif isinstance(message, StreamUpdate):
            self._spawn(self._update(message))
        else:
            self._unsubscribe()

    def _ask(self, message: QuestionAsk) -> None:
        if message.id in self._answers:
            raise ServiceError(
                "duplicate_question", f"question {message.id!r} is still running", id=message.id
            )
        if len(self._answers) >= MAX_OPEN_QUESTIONS:
            raise ServiceError(
                "too_many_questions",
                f"{MAX_OPEN_QUESTIONS} questions are already running on this connection; wait for one to finish",
                id=message.id,
            )
        answer, recall = self.stream.ask(message.id, message.text, message.max_tokens, message.recall)
        self._answers[message.id] = answer
        event("question.asked", stream=self.stream.id, question=message.id, chars=len(message.text))
        self._spawn(self._answer(message, answer, recall))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _update(self, message: StreamUpdate) -> None:
        try:
            await self.stream.update(message)
        except ServiceError as error:
            self._send(error.event())
            return
        self._send(StreamUpdated(event_id=message.event_id, stream=self.stream.info()))

    async def _answer(self, question: QuestionAsk, answer: Answer, recall: ChunkRecall | None) -> None:
        try:
            await self._give_answer(question, answer, recall)
        finally:  # given and logged, failed, or its client gone: a drain waits for this
            self.stream.settled(answer)

    async def _give_answer(self, question: QuestionAsk, answer: Answer, recall: ChunkRecall | None) -> None:
        question_id = question.id
        try:
            async for delta in answer:
                self._send(AnswerDelta(id=question_id, text=delta))
        except Exception as exc:
            code = _ANSWER_ERRORS.get(type(exc))
            if code is not None:
                self._send(
                    ErrorEvent(code=code, message=str(exc), id=question_id, event_id=question.event_id)
                )
                return
            event(
                "question.failed", logging.ERROR, exc_info=True, stream=self.stream.id, question=question_id
            )
            self._send(
                ErrorEvent(
                    code="internal_error",
                    message=f"the answer failed: {exc}",
                    id=question_id,
                    event_id=question.event_id,
                )
            )
            return
        finally:
            answer.cancel()
            self._answers.pop(question_id, None)
        result = answer.result
        assert result is not None  # set when the iteration ends without an error
        if result.finish_reason == "cancelled" and self.stream.cut_by is not None:
            await self._cut(question, result)
            return
        self.stream.record_answer(result, recall)
        stats = AnswerDoneStats(
            generated_tokens=result.generated_tokens,
            time_to_first_delta_ms=None
            if result.time_to_first_delta_s is None
            else result.time_to_first_delta_s * 1000,
            total_ms=result.total_s * 1000,
            finish_reason=result.finish_reason,
            context_tokens=result.context_tokens,
        )
        usage = Usage(
            prompt_tokens=result.prompt_tokens,
            context_tokens=result.context_tokens,
            generated_tokens=result.generated_tokens,
        )
        summary = None if recall is None else _recall_summary(recall)
        self._send(AnswerDone(id=question_id, text=result.text, stats=stats, usage=usage, recall=summary))
        await self.store.log_answer(self._record(question, result, result.finish_reason))
        event(
            "question.answered",
            stream=self.stream.id,
            question=question_id,
            tokens=result.generated_tokens,
            finish_reason=result.finish_reason,
            first_delta_ms=stats.time_to_first_delta_ms,
            total_ms=round(stats.total_ms, 1),
        )

    async def _cut(self, question: QuestionAsk, result: AnswerResult) -> None:
        """An answer the worker cut (`stream.cut_by`: it drains): logged as far as it got, marked
        with why, and its client told (an `error` event for the question, with that code)."""
        reason = self.stream.cut_by
        assert reason is not None
        await self.store.log_answer(self._record(question, result, reason))
        self._send(
            ErrorEvent(
                code=reason,
                message=f"the answer was cut after {result.generated_tokens} tokens ({reason}); "
                "what it had written is in the stream's answer log",
                id=question.id,
                event_id=question.event_id,
            )
        )
        event("question.cut", stream=self.stream.id, question=question.id, tokens=result.generated_tokens)

    def _record(self, question: QuestionAsk, result: AnswerResult, finish_reason: str) -> AnswerRecord:
        """The answer as the answer log keeps it."""
        first_delta = result.time_to_first_delta_s
        return AnswerRecord(
            stream_id=self.stream.id,
            question_id=question.id,
            question=question.text,
            answer=result.text,
            finish_reason=finish_reason,
            generated_tokens=result.generated_tokens,
            time_to_first_delta_ms=None if first_delta is None else first_delta * 1000,
            at=time.time(),
        )

    async def _send_stats(self, interval_s: float) -> None:
        while True:
            if self._outbox.qsize() < MAX_OUTBOX_FOR_STATS:
                self._send(StreamStatsEvent(stream=self.stream.info()))
            await asyncio.sleep(interval_s)

    def _unsubscribe(self) -> None:
        if self._stats is not None:
            self._stats.cancel()
            self._stats = None


def _recall_summary(recall: ChunkRecall) -> RecallSummary:
    """What an answer recalled (set on the worker before its first token, read once it is done)."""
    return RecallSummary(
        mode=recall.mode,  # type: ignore[arg-type]
        spans=recall.spans,
        tokens=recall.tokens,
        latency_ms=recall.seconds * 1000,
    )
