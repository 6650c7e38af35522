"""Ingest: sources of timestamped audio and video, cut into aligned chunks by one chunker."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class MediaError(ValueError):
    """Media that cannot be opened or decoded: corrupt, truncated, or without usable streams."""


async def on_own_thread(fn: Callable[[], None], name: str) -> None:
    """Await a blocking `fn` on a new daemon thread: a wait on it counts `fn`'s own time only,
    and a wait given up leaves nothing behind but that thread, which finishes alone."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        error: Exception | None = None
        try:
            fn()
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(_settle, done, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    await done


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():  # the wait was given up
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
