"""State that outlives one stream and, with Redis, one worker: stream records, the durable log
of questions and answers, live counters, and leases (which worker runs a stream).

`MemoryStore` keeps it in this process (the default, one worker, no Redis). With
`cluster.redis_url` set, `open_store` connects to Redis (`RedisStore`) behind a
`FallbackStore` that keeps serving from memory while Redis is away. The service only talks to
the `Store` protocol.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from streamguard.config import ClusterSettings
from streamguard.vocabulary import StreamRecord

Counters = Mapping[str, float | int | None]


class AnswerRecord(BaseModel):
    stream_id: str
    question_id: str
    question: str
    answer: str
    finish_reason: str
    generated_tokens: int
    time_to_first_delta_ms: float | None
    at: float  # unix seconds, when the answer was done


@dataclass(frozen=True)
class StoreHealth:
    backend: str  # "memory" or "redis"
    up: bool
    reason: str | None = None  # why it is not up
    buffered_answers: int = 0  # answers waiting for Redis to come back


class StoreUnavailableError(ConnectionError):
    """The shared store did not answer (refused, timed out, or went away)."""


class Store(Protocol):
    worker: str  # this process, as leases and stream records name it

    async def put_stream(self, record: StreamRecord) -> None: ...

    async def get_stream(self, stream_id: str) -> StreamRecord | None: ...

    async def log_answer(self, record: AnswerRecord) -> None: ...

    async def answers(self, stream_id: str, limit: int) -> list[AnswerRecord]: ...

    async def put_counters(self, stream_id: str, counters: Counters) -> None:
        """The stream's live counters, replacing the last snapshot."""
        ...

    async def counters(self, stream_id: str) -> dict[str, float] | None: ...

    async def acquire_lease(self, stream_id: str) -> bool:
        """Take the stream's lease for this worker; False when another worker holds it."""
        ...

    async def renew_leases(self, stream_ids: Iterable[str]) -> list[str]:
        """Extend this worker's leases; returns the streams whose lease another worker now holds."""
        ...

    async def release_lease(self, stream_id: str) -> None: ...

    async def expired_streams(self, kind: str | None = None) -> list[StreamRecord]:
        """Active streams nobody holds a lease on (their worker died)."""
        ...

    async def claim_stream(self, stream_id: str) -> StreamRecord | None:
        """Atomically take an expired stream over: its record, now naming this worker, or None
        when another worker was first or the stream is no longer claimable."""
        ...

    def health(self) -> StoreHealth: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """In-process and bounded: the newest `max_streams` streams, `max_answers` answers each.
    One worker holds every lease, so nothing ever expires or needs claiming."""

    def __init__(self, max_streams: int = 1000, max_answers: int = 1000, worker: str | None = None):
        self.max_streams = max_streams
        self.max_answers = max_answers
        self.worker = worker or worker_name()
        self._streams: OrderedDict[str, StreamRecord] = OrderedDict()
        self._answers: dict[str, deque[AnswerRecord]] = {}
        self._counters: dict[str, dict[str, float]] = {}

    async def put_stream(self, record: StreamRecord) -> None:
        self._streams[record.id] = record
        self._streams.move_to_end(record.id)
        while len(self._streams) > self.max_streams:
            oldest, _ = self._streams.popitem(last=False)
            self._answers.pop(oldest, None)
            self._counters.pop(oldest, None)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        return self._streams.get(stream_id)

    def records(self) -> list[StreamRecord]:
        return list(self._streams.values())

    async def log_answer(self, record: AnswerRecord) -> None:
        if record.stream_id in self._streams:
            self._answers.setdefault(record.stream_id, deque(maxlen=self.max_answers)).append(record)

    async def answers(self, stream_id: str, limit: int) -> list[AnswerRecord]:
        log = self._answers.get(stream_id, ())
        return list(log)[-limit:] if limit > 0 else []

    async def put_counters(self, stream_id: str, counters: Counters) -> None:
        if stream_id in self._streams:
            self._counters[stream_id] = {k: float(v) for k, v in counters.items() if v is not None}

    async def counters(self, stream_id: str) -> dict[str, float] | None:
        return self._counters.get(stream_id)

    async def acquire_lease(self, stream_id: str) -> bool:
        return True

    async def renew_leases(self, stream_ids: Iterable[str]) -> list[str]:
        return []

    async def release_lease(self, stream_id: str) -> None:
        return None

    async def expired_streams(self, kind: str | None = None) -> list[StreamRecord]:
        return []

    async def claim_stream(self, stream_id: str) -> StreamRecord | None:
        return None

    def health(self) -> StoreHealth:
        return StoreHealth(backend="memory", up=True)

    async def aclose(self) -> None:
        return None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def open_store(settings: ClusterSettings, worker: str | None = None) -> Store:
    """Redis (with the in-memory fallback) when `redis_url` is set, else memory. Raises
    `StoreUnavailableError`, naming the URL and what to do, when Redis does not answer now."""
    if not settings.redis_url:
        return MemoryStore(max_answers=settings.answer_log_max, worker=worker)
    from streamguard.cluster.fallback import FallbackStore
    from streamguard.cluster.redis_store import RedisStore

    redis = await RedisStore.connect(settings, worker or worker_name())
    return FallbackStore(redis, settings)


async def check_store(settings: ClusterSettings) -> None:
    """Fail now, with `open_store`'s clear error, if the configured store does not answer."""
    store = await open_store(settings)
    await store.aclose()
