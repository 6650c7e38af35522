"""Cross-origin calls to the API: a page loaded from one worker (or the load balancer) sends its
WebRTC offer on to the worker placement chose, then opens its websocket there, so each worker
answers CORS preflights and responses for the API's routes.

The allowed origins are `service.cors_origins`, or by default the origins the cluster's workers
advertise (`cluster.public_url`, read from Redis by the router each third of a lease). The token
travels as the `Authorization` header, never as a cookie: no `Allow-Credentials`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from streamguard.vocabulary import REDIRECT_HEADER, WORKER_URL_HEADER

API_PATHS = ("/v1/", "/healthz")  # the pages' static files need no CORS


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower-cased, as a browser's `Origin` header spells it."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


def websocket_origins(origins: Iterable[str]) -> list[str]:
    """Each http(s) origin and its ws(s) twin, for a content policy's `connect-src`."""
    twins = {"http": "ws", "https": "wss"}
    listed = []
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        listed.append(origin)
        if scheme in twins:
            listed.append(f"{twins[scheme]}://{rest}")
    return listed


class ApiCors(CORSMiddleware):
    """Starlette's CORS handling on the API's paths, its origins looked up on each request
    (`allowed()`: they change as workers come and go)."""

    def __init__(self, app: ASGIApp, allowed: Callable[[], Collection[str]]):
        super().__init__(
            app,
            allow_methods=("GET", "POST", "DELETE"),
            allow_headers=("Authorization", "Content-Type", REDIRECT_HEADER),
            expose_headers=(WORKER_URL_HEADER,),
        )
        self._allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PATHS):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def is_allowed_origin(self, origin: str) -> bool:
        return origin_of(origin) in {origin_of(allowed) for allowed in self._allowed()}
