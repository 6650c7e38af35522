"""The async client: the service's REST endpoints, and its per-stream websockets (`live`)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from streamguard_client.backoff import Backoff
from streamguard_client.errors import ServiceError, UnreachableError, error_from
from streamguard_client.live import Answer, StreamSocket

URL_ENV = "STREAMGUARD_URL"
TOKEN_ENV = "STREAMGUARD_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"
# Safe to send again after any transport failure; others only when the request never left.
_IDEMPOTENT = frozenset({"GET", "DELETE"})
# Placement redirects followed for one request: a worker with room answers; a second one only
# when it filled up meanwhile.
MAX_PLACEMENT_HOPS = 3


class StreamGuard:
    """A StreamGuard service. `url` and `token` default to `$STREAMGUARD_URL` (else
    http://127.0.0.1:8000) and `$STREAMGUARD_TOKEN`. `backoff` paces retries when the service
    cannot be reached, for REST calls and websocket (re)connections alike.

    Streams are plain dicts, exactly the service's JSON (`GET /v1/streams/{id}`): `id`, `kind`,
    `state`, `source`, `chunk`, `pruning`, `stats`, ... Use it with `async with`, or `aclose()`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
    ):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV)
        self.backoff = backoff or Backoff()
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)

    async def __aenter__(self) -> StreamGuard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- streams ------------------------------------------------------------------------------

    async def open_rtsp(self, url: str) -> dict[str, Any]:
        """Start a stream from an RTSP camera (rtsp:// or rtsps://; the service probes it first)."""
        return await self._request("POST", "/v1/streams", json={"source": "rtsp", "url": url})

    async def open_file(self, path: str, *, realtime: bool = True) -> dict[str, Any]:
        """Start a stream from a media file on the service's disk (`service.allow_file_sources`),
        paced at real time like a camera unless `realtime=False`."""
        body = {"source": "file", "path": path, "realtime": realtime}
        return await self._request("POST", "/v1/streams", json=body)

    async def open_webrtc(self, sdp: str) -> dict[str, Any]:
        """Send a WebRTC offer (ICE gathering complete); returns `{"stream_id", "sdp", "type":
        "answer", "stream"}`. `streamguard-publish` does this for you."""
        return await self._request("POST", "/v1/streams/webrtc", json={"sdp": sdp, "type": "offer"})

    async def streams(self) -> list[dict[str, Any]]:
        """Every stream on this worker, with its state and stats."""
        return (await self._request("GET", "/v1/streams"))["streams"]

    async def stream(self, stream_id: str) -> dict[str, Any]:
        """One stream's state, how it is cut and pruned, and its stats."""
        return await self._request("GET", f"/v1/streams/{stream_id}")

    async def delete(self, stream_id: str) -> dict[str, Any]:
        """Stop a stream and free its cache; returns its final state and stats."""
        return await self._request("DELETE", f"/v1/streams/{stream_id}")

    async def answers(self, stream_id: str, limit: int = 50) -> dict[str, Any]:
        """The stream's durable log of questions and answers, oldest first (`{"stream",
        "answers"}`), also after the stream was deleted."""
        return await self._request("GET", f"/v1/streams/{stream_id}/answers", params={"limit": limit})

    async def service_stats(self) -> dict[str, Any]:
        """This worker's totals since it started (`GET /v1/stats`)."""
        return await self._request("GET", "/v1/stats")

    async def protocol(self) -> dict[str, Any]:
        """The service's websocket protocol: `version` and the JSON Schema of every event."""
        return await self._request("GET", "/v1/protocol.json")

    # -- websockets ---------------------------------------------------------------------------

    def connect(self, stream_id: str, *, reconnect: bool = True) -> StreamSocket:
        """The stream's websocket, for several questions and stats on one connection:
        `async with client.connect(stream_id) as socket: ...`."""
        ws_url = "ws" + self.url.removeprefix("http")
        return StreamSocket(
            ws_url,
            self.token,
            stream_id,
            backoff=self.backoff,
            reconnect=reconnect,
            open_timeout_s=self.timeout_s,
        )

    def ask(
        self,
        stream_id: str,
        text: str,
        *,
        max_tokens: int | None = None,
        recall: str | dict[str, float] | None = None,
    ) -> Answer:
        """One question on a socket of its own: `async for delta in client.ask(id, "What?")`,
        then the answer's `text` and `stats` (see `StreamSocket.ask`)."""
        socket = self.connect(stream_id, reconnect=False)
        return socket.ask(text, max_tokens=max_tokens, recall=recall, own_socket=True)

    async def update(
        self, stream_id: str, *, pruning: dict[str, Any] | None = None, sampling: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Change a running stream's pruning and default sampling (see `StreamSocket.update`);
        returns the stream as it now is."""
        async with self.connect(stream_id, reconnect=False) as socket:
            return await socket.update(pruning=pruning, sampling=sampling)

    async def watch(self, stream_id: str, interval_s: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The stream's state and stats every `interval_s`, over a socket that reconnects."""
        async with self.connect(stream_id) as socket:
            async for stream in socket.stats(interval_s):
                yield stream

    # -- transport ----------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **options: Any) -> Any:
        """The call's JSON reply. A full worker of a cluster answers 307 to one with room: the
        request goes there, token and all (httpx, as browsers, would drop the Authorization
        header on a redirect to another origin; the token is the cluster's, not a stranger's)."""
        response = await self._send(method, path, **options)
        for _ in range(MAX_PLACEMENT_HOPS):
            if response.status_code not in (307, 308) or "location" not in response.headers:
                break
            response = await self._send(method, response.headers["location"], **options)
        if response.is_error or response.is_redirect:
            raise _error_of(response)
        return response.json()

    async def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One request (`path`, or a worker's absolute URL), retried while the service cannot be
        reached (only a request that never left, unless it is idempotent)."""
        delays = itertools.chain([0.0], self.backoff.delays())
        for delay in delays:
            await asyncio.sleep(delay)
            try:
                response = await self._http.request(method, path, **options)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure: httpx.TransportError = exc
            except httpx.TransportError as exc:
                if method not in _IDEMPOTENT:
                    raise UnreachableError(f"{method} {self.url}{path}: {exc!r}") from exc
                failure = exc
        else:
            raise UnreachableError(f"cannot reach the service at {self.url}: {failure!r}") from failure
        return response


def _error_of(response: httpx.Response) -> ServiceError:
    try:
        body = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return ServiceError(
            response.text or response.reason_phrase,
            code=f"http_{response.status_code}",
            status=response.status_code,
        )
    return error_from(body, status=response.status_code)
