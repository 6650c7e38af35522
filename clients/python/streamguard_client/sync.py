"""A blocking wrapper of `StreamGuard` for scripts: the async client runs on an event loop of its
own, on a background thread, and each call waits for its result."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from streamguard_client.backoff import Backoff
from streamguard_client.client import StreamGuard
from streamguard_client.live import Answer

T = TypeVar("T")


class Client:
    """`StreamGuard`, blocking: the same methods and arguments, results returned instead of
    awaited. Use it with `with`, or `close()` it."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
    ):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="streamguard-client", daemon=True)
        self._thread.start()
        self.aio = self._call(_make(url, token, timeout_s, backoff))  # the async client underneath

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self.aio.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._call(_next(items))
                except StopAsyncIteration:
                    return
        finally:  # left early, or done: let the async side clean up (cancel, close its socket)
            close = getattr(items, "aclose", None)
            if close is not None:
                self._call(close())

    def open_rtsp(self, url: str) -> dict[str, Any]:
        return self._call(self.aio.open_rtsp(url))

    def open_file(self, path: str, *, realtime: bool = True) -> dict[str, Any]:
        return self._call(self.aio.open_file(path, realtime=realtime))

    def streams(self) -> list[dict[str, Any]]:
        return self._call(self.aio.streams())

    def stream(self, stream_id: str) -> dict[str, Any]:
        return self._call(self.aio.stream(stream_id))

    def delete(self, stream_id: str) -> dict[str, Any]:
        return self._call(self.aio.delete(stream_id))

    def answers(self, stream_id: str, limit: int = 50) -> dict[str, Any]:
        return self._call(self.aio.answers(stream_id, limit))

    def service_stats(self) -> dict[str, Any]:
        return self._call(self.aio.service_stats())

    def protocol(self) -> dict[str, Any]:
        return self._call(self.aio.protocol())

    def ask(
        self,
        stream_id: str,
        text: str,
        *,
        max_tokens: int | None = None,
        recall: str | dict[str, float] | None = None,
    ) -> SyncAnswer:
        """`for delta in client.ask(id, "What?")`, then the answer's `text` and `stats`."""
        return SyncAnswer(self, self.aio.ask(stream_id, text, max_tokens=max_tokens, recall=recall))

    def update(
        self, stream_id: str, *, pruning: dict[str, Any] | None = None, sampling: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._call(self.aio.update(stream_id, pruning=pruning, sampling=sampling))

    def watch(self, stream_id: str, interval_s: float | None = None) -> Iterator[dict[str, Any]]:
        """The stream's state and stats every `interval_s`."""
        return self._iterate(self.aio.watch(stream_id, interval_s))


class SyncAnswer:
    """An `Answer`, blocking: iterate it for the deltas; then `text`, `stats`, `usage`, `done`."""

    def __init__(self, client: Client, answer: Answer):
        self._client, self._answer = client, answer

    def __iter__(self) -> Iterator[str]:
        return self._client._iterate(aiter(self._answer))

    def result(self) -> SyncAnswer:
        for _ in self:
            pass
        return self

    def cancel(self) -> None:
        self._client._call(self._answer.cancel())

    def __getattr__(self, name: str) -> Any:  # id, text, stats, usage, done
        return getattr(self._answer, name)


async def _make(url: str | None, token: str | None, timeout_s: float, backoff: Backoff | None) -> StreamGuard:
    return StreamGuard(url, token, timeout_s=timeout_s, backoff=backoff)


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)
