"""State that outlives one stream and, later, one worker: stream records and the durable
log of questions and answers.

`MemoryStore` keeps it in this process (the default, one worker). A Redis store with the same
methods comes with several workers (leases, routing, live counters); the service only talks
to the `Store` protocol.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict, deque
from typing import Protocol

from pydantic import BaseModel

from streamguard.config import ClusterSettings


class StreamRecord(BaseModel):
    id: str
    kind: str
    source: str
    state: str
    error: str | None
    created: float  # unix seconds
    worker: str  # the process that holds the stream's cache


class AnswerRecord(BaseModel):
    stream_id: str
    question_id: str
    question: str
    answer: str
    finish_reason: str
    generated_tokens: int
    time_to_first_delta_ms: float | None
    at: float  # unix seconds, when the answer was done


class Store(Protocol):
    async def put_stream(self, record: StreamRecord) -> None: ...

    async def get_stream(self, stream_id: str) -> StreamRecord | None: ...

    async def log_answer(self, record: AnswerRecord) -> None: ...

    async def answers(self, stream_id: str, limit: int) -> list[AnswerRecord]: ...


class MemoryStore:
    """In-process and bounded: the newest `max_streams` streams, `max_answers` answers each."""

    def __init__(self, max_streams: int = 1000, max_answers: int = 1000):
        self.max_streams = max_streams
        self.max_answers = max_answers
        self._streams: OrderedDict[str, StreamRecord] = OrderedDict()
        self._answers: dict[str, deque[AnswerRecord]] = {}

    async def put_stream(self, record: StreamRecord) -> None:
        self._streams[record.id] = record
        self._streams.move_to_end(record.id)
        while len(self._streams) > self.max_streams:
            oldest, _ = self._streams.popitem(last=False)
            self._answers.pop(oldest, None)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        return self._streams.get(stream_id)

    async def log_answer(self, record: AnswerRecord) -> None:
        if record.stream_id in self._streams:
            self._answers.setdefault(record.stream_id, deque(maxlen=self.max_answers)).append(record)

    async def answers(self, stream_id: str, limit: int) -> list[AnswerRecord]:
        log = self._answers.get(stream_id, ())
        return list(log)[-limit:] if limit > 0 else []


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_store(settings: ClusterSettings) -> Store:
    if settings.redis_url:
        raise ValueError(
            "cluster.redis_url is set, but this build has only the in-memory store; unset it to run one worker"
        )
    return MemoryStore()
