"""The `Store` on a Redis server, shared by every worker of a cluster.

Keys, under `cluster.key_prefix` (default `streamguard:`):

    stream:{id}    hash    the stream record, one JSON value per field
    active         zset    ids of streams in an active state, scored by creation time
    answers:{id}   stream  the question/answer log, capped at `answer_log_max` entries
    counters:{id}  hash    the stream's live counters (last snapshot) and `at`
    lease:{id}     string  the worker running the stream; expires unless heartbeated

A finished stream's keys expire after `finished_ttl_s`. Every call is bounded by `timeout_s`
and raises `StoreUnavailableError` when Redis does not answer; `FallbackStore` turns that into
running from memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from streamguard.cluster.store import AnswerRecord, Counters, StoreHealth, StoreUnavailableError
from streamguard.config import ClusterSettings
from streamguard.vocabulary import ACTIVE_STATES, StreamRecord

# Extend each lease this worker holds; take again one that lapsed while the stream's record still
# names this worker, or does not exist (nobody claimed it meanwhile). A lease another worker
# holds, or a lapsed one whose record names another worker, is not touched: its index is
# returned. KEYS: the n leases, then the n records.
_RENEW = """
local lost = {}
local n = #KEYS / 2
for i = 1, n do
  local holder = redis.call('GET', KEYS[i])
  local named = redis.call('HGET', KEYS[n + i], 'worker')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  elseif not holder and (not named or named == cjson.encode(ARGV[1])) then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"""

# Write a stream's record, only as its writer: the worker holding its lease, or, while nobody
# does, the worker the record names (or anyone, for a record Redis does not have). So a worker
# back from a stall cannot overwrite the record of a stream another worker took over.
# KEYS: record, lease, active set, answers, counters. ARGV: worker, stream id, active ("1"/"0"),
# created, finished TTL in ms, then the record's field/value pairs. An active stream's record
# never expires; a finished one's keys expire after the TTL.
_PUT_RECORD = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
if not holder then
  local named = redis.call('HGET', KEYS[1], 'worker')
  if named and named ~= cjson.encode(ARGV[1]) then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[3] == '1' then
  redis.call('PERSIST', KEYS[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
else
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
end
return 1
"""

# Delete the lease only if this worker still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""

# Take over an active stream whose lease lapsed: lease and record's worker in one step.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return nil end
state = cjson.decode(state)
local active = false
for i = 3, #ARGV do if ARGV[i] == state then active = true end end
if not active then return nil end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'worker', cjson.encode(ARGV[1]))
return redis.call('HGETALL', KEYS[2])
"""

# Append to the capped log; the log expires with its finished stream.
_LOG_ANSWER = """
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'answer', ARGV[2])
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
"""


class RedisStore:
    def __init__(self, client: Redis, settings: ClusterSettings, worker: str):
        self.client = client
        self.settings = settings
        self.worker = worker
        self.url = redacted_url(settings.redis_url or "")
        self._prefix = settings.key_prefix
        self._lease_ms = max(1, round(settings.lease_ttl_s * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._put_record = client.register_script(_PUT_RECORD)
        self._claim = client.register_script(_CLAIM)
        self._log_answer = client.register_script(_LOG_ANSWER)
        self._failure: str | None = None  # how the last call failed; None once one succeeds

    @classmethod
    async def connect(cls, settings: ClusterSettings, worker: str) -> RedisStore:
        """A store on `settings.redis_url` that answered a ping, or a clear error saying what to do."""
        url = settings.redis_url or ""
        try:
            client = Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=settings.timeout_s,
                socket_connect_timeout=settings.timeout_s,
                retry=Retry(NoBackoff(), 0),  # an outage is handled above, not by silent retries
            )
        except ValueError as exc:
            raise ValueError(f"cluster.redis_url {redacted_url(url)!r}: {exc}") from None
        store = cls(client, settings, worker)
        try:
            await store.ping()
        except StoreUnavailableError as exc:
            await store.aclose()
            raise StoreUnavailableError(
                f"cannot reach Redis (cluster.redis_url): {str(exc).rstrip('.')}. Start Redis there, "
                "correct cluster.redis_url (env STREAMGUARD_CLUSTER__REDIS_URL), or unset it to run "
                "one worker with its state in memory."
            ) from None
        return store

    def key(self, kind: str, stream_id: str = "") -> str:
        return f"{self._prefix}{kind}:{stream_id}" if stream_id else f"{self._prefix}{kind}"

    @asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                yield
        except TimeoutError:  # before OSError, whose subclass it is
            self._failure = (
                f"Redis at {self.url} did not answer ({what}) within {self.settings.timeout_s:g} s"
            )
        except (RedisError, OSError) as exc:
            self._failure = f"Redis at {self.url} failed ({what}): {exc or type(exc).__name__}"
        else:
            self._failure = None
            return
        raise StoreUnavailableError(self._failure)

    async def ping(self) -> None:
        async with self._call("ping"):
            await self.client.ping()

    # -- stream records ----------------------------------------------------------------------

    async def put_stream(self, record: StreamRecord) -> None:
        await self.put_streams([record])

    async def put_streams(self, records: Iterable[StreamRecord]) -> None:
        """Write records in one transaction (also how a worker re-syncs after an outage); a record
        whose stream another worker holds now is left as that worker wrote it."""
        async with self._call("put_stream"):
            pipe = self.client.pipeline(transaction=True)
            for record in records:
                await self._queue_record(pipe, record)
            await pipe.execute()

    async def _queue_record(self, pipe: Pipeline, record: StreamRecord) -> None:
        keys = [self.key(kind, record.id) for kind in ("stream", "lease")]
        keys += [self.key("active"), self.key("answers", record.id), self.key("counters", record.id)]
        active = "1" if record.state in ACTIVE_STATES else "0"
        args = [self.worker, record.id, active, record.created, round(self.settings.finished_ttl_s * 1000)]
        args += [part for k, v in record.model_dump().items() for part in (k, json.dumps(v))]
        await self._put_record(keys=keys, args=args, client=pipe)  # queued: runs on execute

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        async with self._call("get_stream"):
            fields = await self.client.hgetall(self.key("stream", stream_id))
        return _record(fields)

    async def missing_streams(self, stream_ids: list[str]) -> list[str]:
        """Which of these streams Redis has no record of."""
        async with self._call("missing_streams"):
            pipe = self.client.pipeline(transaction=False)
            for stream_id in stream_ids:
                pipe.exists(self.key("stream", stream_id))
            found = await pipe.execute()
        return [stream_id for stream_id, exists in zip(stream_ids, found, strict=True) if not exists]

    # -- answer log --------------------------------------------------------------------------

    async def log_answer(self, record: AnswerRecord) -> None:
        await self.log_answers([record])

    async def log_answers(self, records: Iterable[AnswerRecord]) -> None:
        """Append in order, in one transaction (how answers buffered in an outage are flushed):
        all or none, so a retry adds no twins."""
        async with self._call("log_answer"):
            pipe = self.client.pipeline(transaction=True)
            for record in records:
                await self._queue_answer(pipe, record)
            await pipe.execute()

    async def restore_stream(self, record: StreamRecord, answers: Iterable[AnswerRecord]) -> None:
        """Write a stream Redis lost (it restarted empty) from a worker's own copy: the record
        and its whole answer log, replacing any, in one transaction."""
        async with self._call("restore_stream"):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.key("answers", record.id))
            await self._queue_record(pipe, record)
            for answer in answers:
                await self._queue_answer(pipe, answer)
            await pipe.execute()

    async def _queue_answer(self, pipe: Pipeline, record: AnswerRecord) -> None:
        keys = [self.key("answers", record.stream_id), self.key("stream", record.stream_id)]
        args = [self.settings.answer_log_max, record.model_dump_json()]
        await self._log_answer(keys=keys, args=args, client=pipe)  # queued: runs on execute

    async def answers(self, stream_id: str, limit: int) -> list[AnswerRecord]:
        if limit <= 0:
            return []
        async with self._call("answers"):
            entries = await self.client.xrevrange(self.key("answers", stream_id), count=limit)
        return [AnswerRecord.model_validate_json(fields["answer"]) for _, fields in reversed(entries)]

    # -- live counters -----------------------------------------------------------------------

    async def put_counters(self, stream_id: str, counters: Counters) -> None:
        snapshot: dict[str, float] = {k: float(v) for k, v in counters.items() if v is not None}
        snapshot["at"] = time.time()
        key = self.key("counters", stream_id)
        async with self._call("put_counters"):
            await self.client.pipeline(transaction=True).delete(key).hset(key, mapping=snapshot).execute()

    async def counters(self, stream_id: str) -> dict[str, float] | None:
        async with self._call("counters"):
            fields = await self.client.hgetall(self.key("counters", stream_id))
        return {k: float(v) for k, v in fields.items()} or None

    # -- leases ------------------------------------------------------------------------------

    async def acquire_lease(self, stream_id: str) -> bool:
        async with self._call("acquire_lease"):
            taken = await self.client.set(
                self.key("lease", stream_id), self.worker, nx=True, px=self._lease_ms
            )
            return bool(taken) or await self.client.get(self.key("lease", stream_id)) == self.worker

    async def renew_leases(self, stream_ids: Iterable[str]) -> list[str]:
        ids = list(stream_ids)
        if not ids:
            return []
        async with self._call("renew_leases"):
            keys = [self.key("lease", i) for i in ids] + [self.key("stream", i) for i in ids]
            lost = await self._renew(keys=keys, args=[self.worker, self._lease_ms])
        return [ids[index - 1] for index in lost]

    async def lease_holder(self, stream_id: str) -> str | None:
        async with self._call("lease_holder"):
            return await self.client.get(self.key("lease", stream_id))

    async def release_lease(self, stream_id: str) -> None:
        async with self._call("release_lease"):
            await self._release(keys=[self.key("lease", stream_id)], args=[self.worker])

    async def expired_streams(self, kind: str | None = None) -> list[StreamRecord]:
        async with self._call("expired_streams"):
            ids = await self.client.zrange(self.key("active"), 0, -1)
            pipe = self.client.pipeline(transaction=False)
            for stream_id in ids:
                pipe.hgetall(self.key("stream", stream_id))
                pipe.exists(self.key("lease", stream_id))
            replies = await pipe.execute()
        expired = []
        for fields, leased in zip(replies[::2], replies[1::2], strict=True):
            record = _record(fields)
            if record and not leased and record.state in ACTIVE_STATES and kind in (None, record.kind):
                expired.append(record)
        return expired

    async def claim_stream(self, stream_id: str) -> StreamRecord | None:
        keys = [self.key("lease", stream_id), self.key("stream", stream_id)]
        async with self._call("claim_stream"):
            reply = await self._claim(keys=keys, args=[self.worker, self._lease_ms, *sorted(ACTIVE_STATES)])
        return _record(dict(zip(reply[::2], reply[1::2], strict=True))) if reply else None

    # -- the connection ----------------------------------------------------------------------

    def health(self) -> StoreHealth:
        """As the last call found Redis."""
        return StoreHealth(backend="redis", up=self._failure is None, reason=self._failure)

    async def aclose(self) -> None:
        await self.client.aclose()


def _record(fields: dict[str, str]) -> StreamRecord | None:
    if not fields:
        return None
    decoded: dict[str, Any] = {name: json.loads(value) for name, value in fields.items()}
    return StreamRecord.model_validate(decoded)


def redacted_url(url: str) -> str:
    """The URL fit for logs and errors: a password shows as `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
