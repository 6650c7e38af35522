"""Taking over the streams of workers that died: when a stream's lease lapses (its worker
stopped heartbeating), a worker with room claims it. An RTSP camera runs on here under the same
stream id with a fresh cache; a WebRTC or file stream cannot move, and its record says so
(should its worker come back, the lease and the record are its own again). A draining worker
hands its cameras over through `adopt`, at once rather than at the next round.

`TakeOver` knows the store and the lease TTL; what a stream is and how one opens stays with the
caller, behind plain callbacks (as `Heartbeat` gets them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from streamguard.cluster.store import Store
from streamguard.vocabulary import StreamKind, StreamRecord, StreamState

log = logging.getLogger("streamguard.cluster")


class TakeOver:
    def __init__(
        self,
        store: Store,
        lease_ttl_s: float,
        runs: Callable[[str], bool],
        has_room: Callable[[str], bool],
        continue_camera: Callable[[StreamRecord], Awaitable[None]],
    ):
        """`runs(stream_id)`: this worker holds the stream already; `has_room(owner)`: it may
        open one more for that token; `continue_camera(record)` opens a claimed camera here."""
        self.store = store
        self.lease_ttl_s = lease_ttl_s
        self.runs = runs
        self.has_room = has_room
        self.continue_camera = continue_camera
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-take-over")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def round(self) -> None:
        """Claim every stream whose lease lapsed that this worker may run."""
        for record in await self.store.expired_streams():
            if not self.runs(record.id):
                await self._take_over(record)

    async def adopt(self, stream_id: str) -> bool:
        """Take over a camera a draining worker just let go of (it released the lease); False
        when this worker has no room or another was first."""
        record = await self.store.get_stream(stream_id)
        if record is None or record.kind != StreamKind.RTSP or record.worker == self.store.worker:
            return False
        return await self._take_over(record)

    async def _take_over(self, record: StreamRecord) -> bool:
        """Claim an expired stream: a camera runs on here, another kind is recorded as lost.
        True once a camera runs here."""
        movable = record.kind == StreamKind.RTSP and record.reopen_url and record.owner
        if movable and not self.has_room(record.owner):
            return False  # stays claimable by a worker with room
        claimed = await self.store.claim_stream(record.id)
        if claimed is None:  # another worker was first
            return False
        try:
            if movable:
                await self.continue_camera(claimed)
                return True
            await self._record_lost(claimed, record.worker)
        except Exception:  # this stream only: the others of the round still get their turn
            log.warning("stream.take_over_failed stream=%s", record.id, exc_info=True)
            await self._give_back(record)
        return False

    async def _record_lost(self, claimed: StreamRecord, worker: str) -> None:
        lost = f"its worker {worker} stopped; a {claimed.kind} stream cannot move to another worker"
        update = {"state": StreamState.ERROR, "error": lost, "worker": worker}
        await self._give_back(claimed.model_copy(update=update))
        log.warning("stream.lost stream=%s kind=%s worker=%s", claimed.id, claimed.kind, worker)

    async def _give_back(self, record: StreamRecord) -> None:
        """Write `record` (naming the worker the stream was claimed from), then release the
        claimed lease: the stream is that worker's, or claimable, once more."""
        await self.store.put_stream(record)
        await self.store.release_lease(record.id)

    async def _run(self) -> None:
        up_since: float | None = None
        while True:
            await asyncio.sleep(self.lease_ttl_s / 2)
            # After an outage of the store every worker's leases may have lapsed at once: give
            # the live ones two lease periods to renew before taking anything over.
            now = time.monotonic()
            if not self.store.health().up:
                up_since = None
                continue
            up_since = now if up_since is None else up_since
            if now - up_since < 2 * self.lease_ttl_s:
                continue
            try:
                await self.round()
            except Exception:  # one failed round (Redis away) must not end the next
                log.exception("stream.take_over_failed")
