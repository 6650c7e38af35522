"""Graceful drain: a worker leaving (SIGTERM from a deploy, or `POST /v1/admin/drain`) loses no
camera. It takes no new stream, hands every running RTSP camera to another worker at once
(`StreamRegistry.drain`: the lease released and the record left active, then offered to each
live worker in turn), tells each stream's websocket clients where it went (`stream.moved`) or
that it ends (`stream.ending`, `worker_draining`), then stops the server, all within
`cluster.drain_timeout_s`.

SIGTERM must be heard before the server's own handler: uvicorn closes every websocket before
the app's shutdown runs, too late to tell clients anything. So the drain takes the signal over
at startup and hands it on to uvicorn's handler once done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from streamguard.service.logs import event
from streamguard.service.streams import StreamRegistry


class Drain:
    def __init__(
        self,
        registry: StreamRegistry,
        hand_over: Callable[[str], Awaitable[str | None]],
        timeout_s: float,
        announce: Callable[[], Awaitable[None]] | None = None,
    ):
        """`announce()`: tell the cluster now that this worker has no room (its card in Redis,
        otherwise rewritten only at the router's next round)."""
        self.registry = registry
        self.hand_over = hand_over
        self.timeout_s = timeout_s
        self.announce = announce
        self._stop_server: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def on_sigterm(self) -> Callable[[], None]:
        """Drain on SIGTERM, then pass the signal to the handler it replaced (the server's);
        returns what puts that handler back. Only the main thread can take signals: elsewhere
        (a server run in a test's thread) nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)
        if callable(previous):
            self._stop_server = lambda: previous(signal.SIGTERM, None)
        signal.signal(signal.SIGTERM, lambda signum, frame: loop.call_soon_threadsafe(self.start))
        return lambda: signal.signal(signal.SIGTERM, previous)

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> asyncio.Task[None]:
        """The drain, started once however often it is asked for."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="drain")
        return self._task

    async def _run(self) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                self.registry.draining = True  # no room from here on: placement looks elsewhere
                if self.announce is not None:
                    with contextlib.suppress(RedisError, OSError):  # the next round tells it then
                        await self.announce()
                await self.registry.drain(self.hand_over)
        except TimeoutError:
            event("service.drain_timed_out", logging.WARNING, timeout_s=self.timeout_s)
        except Exception:  # the server must stop all the same
            event("service.drain_failed", logging.ERROR, exc_info=True)
        event("service.drained", seconds=round(time.monotonic() - started, 3))
        if self._stop_server is not None:
            self._stop_server()
