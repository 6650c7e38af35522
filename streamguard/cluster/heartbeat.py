"""A worker's pulse: every beat it renews the leases of the streams it runs and writes their
records and live counters, so other workers see it alive and a dead worker's streams can be
claimed (and a record another worker marked while this one stalled is put right)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from streamguard.cluster.store import Counters, Store
from streamguard.vocabulary import StreamRecord

log = logging.getLogger("streamguard.cluster")


class Heartbeat:
    def __init__(
        self,
        store: Store,
        active_streams: Callable[[], Mapping[str, tuple[StreamRecord, Counters]]],
        lease_lost: Callable[[str], Awaitable[None]],
        interval_s: float,
    ):
        """`active_streams` gives the record and counters of every stream this worker runs; `lease_lost` hears
        of each stream whose lease another worker took."""
        self.store = store
        self.active_streams = active_streams
        self.lease_lost = lease_lost
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def beat(self) -> None:
        streams = self.active_streams()
        lost = await self.store.renew_leases(streams)
        for stream_id in lost:
            await self.lease_lost(stream_id)
        for stream_id, (record, counters) in streams.items():
            if stream_id not in lost:
                await self.store.put_stream(record)
                await self.store.put_counters(stream_id, counters)

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:  # a bug here must not stop the leases of the next beat
                log.exception("heartbeat.failed")
            await asyncio.sleep(self.interval_s)
