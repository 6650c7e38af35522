"""Security headers on every HTTP response: the pages may not be framed (clickjacking), no
response is content-sniffed, and the pages run only the service's own scripts and styles, and
call only this origin and the cluster's other workers (where placement sends a stream). The API
docs (Swagger UI and ReDoc load their code from a CDN) get all but the content policy."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamguard.service.cors import websocket_origins

_POLICY = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob: mediastream:",
    "connect-src 'self'",  # the API and its websockets, on this origin and the cluster's workers
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
]
_DOCS = ("/docs", "/redoc")


def content_security_policy(workers: Iterable[str] = ()) -> str:
    """The pages' policy; `workers`: the origins of the cluster's workers the page may call."""
    connect = " ".join(["connect-src 'self'", *websocket_origins(sorted(workers))])
    return "; ".join(connect if rule.startswith("connect-src") else rule for rule in _POLICY)


class SecurityHeaders:
    def __init__(self, app: ASGIApp, workers: Callable[[], Iterable[str]] = tuple):
        """`workers()`: the origins of the cluster's workers now (they come and go)."""
        self.app = app
        self.workers = workers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope["path"].startswith(_DOCS)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                if not docs:
                    headers["Content-Security-Policy"] = content_security_policy(self.workers())
            await send(message)

        await self.app(scope, receive, with_headers)
