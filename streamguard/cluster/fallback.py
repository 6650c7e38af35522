"""Redis that may go away: this worker's state mirrored in memory, so the service keeps running.

Every write lands in a local `MemoryStore` first, then in Redis while it is up. The first call
that finds Redis gone logs one warning, and from then on calls skip Redis: reads come from
memory, answers wait in a bounded buffer, and a background probe pings Redis every
`retry_interval_s`. Once it answers, the worker's stream records are written again, a stream
Redis lost (it restarted empty) gets this worker's copy of its answer log back, the buffered
answers are appended in their order, and Redis is used again.
Leases need nothing: the heartbeat's next renewal takes a lapsed lease back unless another worker
claimed it meanwhile, and a record another worker holds now is not overwritten (`RedisStore`
writes a record only as its writer). Workers wait two lease periods after an outage before they
take other workers' streams over, so every live worker has renewed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator

from streamguard.cluster.redis_store import RedisStore
from streamguard.cluster.store import (
    AnswerRecord,
    Counters,
    MemoryStore,
    StoreHealth,
    StoreUnavailableError,
)
from streamguard.config import ClusterSettings
from streamguard.vocabulary import StreamRecord

log = logging.getLogger("streamguard.cluster")

FLUSH_BATCH = 500  # buffered answers appended per round trip once Redis is back


class FallbackStore:
    def __init__(self, redis: RedisStore, settings: ClusterSettings):
        self.redis = redis
        self.worker = redis.worker
        self.local = MemoryStore(max_answers=settings.answer_log_max, worker=redis.worker)
        self._settings = settings
        self._outage: str | None = None  # why Redis is down; None while it is up
        self._buffered: deque[AnswerRecord] = deque()
        self._dropped = 0  # buffered answers pushed out by newer ones in this outage
        self._unsure: AnswerRecord | None = None  # the answer whose write found Redis gone
        # Writes take turns, so answers reach Redis in the order they were given and a re-sync
        # is never overtaken by a write it would then overwrite.
        self._writing = asyncio.Lock()
        self._probe: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._outage is None

    # -- stream records ----------------------------------------------------------------------

    async def put_stream(self, record: StreamRecord) -> None:
        async with self._writing:
            await self.local.put_stream(record)
            if self.up:
                with self._falls_back():
                    await self.redis.put_stream(record)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        if self.up:
            with self._falls_back():
                # another worker's stream, else this one's (Redis may not have it yet)
                return await self.redis.get_stream(stream_id) or await self.local.get_stream(stream_id)
        return await self.local.get_stream(stream_id)

    # -- answer log --------------------------------------------------------------------------

    async def log_answer(self, record: AnswerRecord) -> None:
        # Shielded: a caller cancelled mid-write (its client left) must not lose an accepted answer.
        await asyncio.shield(self._append(record))

    async def _append(self, record: AnswerRecord) -> None:
        async with self._writing:
            await self.local.log_answer(record)
            if self.up:
                with self._falls_back():
                    await self.redis.log_answer(record)
                    return
                self._unsure = record  # the call failed, but Redis may have applied it
            self._buffer(record)

    async def answers(self, stream_id: str, limit: int) -> list[AnswerRecord]:
        if self.up:
            with self._falls_back():
                return await self.redis.answers(stream_id, limit)
        return await self.local.answers(stream_id, limit)

    def _buffer(self, record: AnswerRecord) -> None:
        if len(self._buffered) >= self._settings.outage_buffer_max:
            self._buffered.popleft()
            self._dropped += 1
            if self._dropped == 1:
                log.warning(
                    "store.buffer_full url=%s limit=%d: the oldest buffered answers will not reach "
                    "Redis (this worker still serves them from memory)",
                    self.redis.url,
                    self._settings.outage_buffer_max,
                )
        self._buffered.append(record)

    # -- live counters -----------------------------------------------------------------------

    async def put_counters(self, stream_id: str, counters: Counters) -> None:
        await self.local.put_counters(stream_id, counters)
        if self.up:  # a lost snapshot needs no buffer: the next one replaces it
            with self._falls_back():
                await self.redis.put_counters(stream_id, counters)

    async def counters(self, stream_id: str) -> dict[str, float] | None:
        if self.up:
            with self._falls_back():
                return await self.redis.counters(stream_id)
        return await self.local.counters(stream_id)

    # -- leases: while Redis is away this worker keeps running its streams; their leases may
    # lapse meanwhile, and the first renewal after the outage reports any another worker claimed.

    async def acquire_lease(self, stream_id: str) -> bool:
        if self.up:
            with self._falls_back():
                return await self.redis.acquire_lease(stream_id)
        return True

    async def renew_leases(self, stream_ids: Iterable[str]) -> list[str]:
        if self.up:
            with self._falls_back():
                return await self.redis.renew_leases(stream_ids)
        return []

    async def release_lease(self, stream_id: str) -> None:
        if self.up:
            with self._falls_back():
                await self.redis.release_lease(stream_id)

    async def expired_streams(self, kind: str | None = None) -> list[StreamRecord]:
        if self.up:
            with self._falls_back():
                return await self.redis.expired_streams(kind)
        return []

    async def claim_stream(self, stream_id: str) -> StreamRecord | None:
        if self.up:
            with self._falls_back():
                return await self.redis.claim_stream(stream_id)
        return None

    # -- outages -----------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        reason = self._outage
        if reason is not None and self._dropped:
            reason += f"; {self._dropped} buffered answers dropped (buffer full)"
        return StoreHealth(backend="redis", up=self.up, reason=reason, buffered_answers=len(self._buffered))

    @contextlib.contextmanager
    def _falls_back(self) -> Iterator[None]:
        """Run a Redis call; if Redis is gone, note the outage and carry on after the block."""
        try:
            yield
        except StoreUnavailableError as exc:
            self._went_down(str(exc))

    def _went_down(self, reason: str) -> None:
        if self._outage is not None:
            return
        self._outage = reason
        log.warning(
            "store.down url=%s reason=%r: serving from memory, buffering answers, retrying every %g s",
            self.redis.url,
            reason,
            self._settings.retry_interval_s,
        )
        self._probe = asyncio.create_task(self._wait_for_redis(), name="store-probe")

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(self._settings.retry_interval_s)
            try:
                async with self._writing:
                    records, answers = await self._resync()
            except StoreUnavailableError:
                continue
            except Exception:  # a bug must not leave the worker on memory for good
                log.exception("store.resync_failed url=%s", self.redis.url)
                continue
            log.info(
                "store.up url=%s: back after the outage; re-synced %d stream records and %d answers",
                self.redis.url,
                records,
                answers,
            )
            return

    async def _resync(self) -> tuple[int, int]:
        """Write this worker's records and buffered answers to Redis, then use it again. Each
        step is a transaction that is not repeated once done, so a probe that fails half-way
        leaves no twins when the next one finishes."""
        await self.redis.ping()
        records = self.local.records()
        lost = set(await self.redis.missing_streams([record.id for record in records]))
        restored = 0
        for record in records:
            if record.id in lost:  # Redis restarted empty: this worker's copy of the log replaces it
                log = await self.local.answers(record.id, self.local.max_answers)
                await self.redis.restore_stream(record, log)
                self._buffered = deque(a for a in self._buffered if a.stream_id != record.id)
                restored += len(log)
        await self.redis.put_streams(r for r in records if r.id not in lost)
        unsure = self._unsure
        # Only this worker appends to its streams' logs: had the failed write landed, it is the last.
        if (
            unsure is not None
            and unsure in self._buffered
            and [unsure] == await self.redis.answers(unsure.stream_id, 1)
        ):
            self._buffered.remove(unsure)
        flushed = 0
        while self._buffered:
            batch = list(itertools.islice(self._buffered, FLUSH_BATCH))
            await self.redis.log_answers(batch)
            for _ in batch:
                self._buffered.popleft()
            flushed += len(batch)
        self._outage, self._dropped, self._unsure = None, 0, None
        return len(records), restored + flushed

    async def aclose(self) -> None:
        """Stop the probe; answers still buffered get one last try (a drain or a restart may
        come between Redis' return and the probe's next round), then are lost, and said so."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if not self.up:
            with contextlib.suppress(StoreUnavailableError):
                async with self._writing:
                    _, answers = await self._resync()
                log.info("store.flushed_at_close url=%s: %d answers written", self.redis.url, answers)
        if self._buffered:
            log.warning(
                "store.closed url=%s: %d answers never reached Redis (Redis was down)",
                self.redis.url,
                len(self._buffered),
            )
        await self.redis.aclose()
