"""Request bodies are bounded before they are read: `BodyLimit` answers 413 `request_too_large`
to a declared Content-Length over the route's limit without reading a byte, and stops a body
sent without one (chunked) as soon as it passes the limit."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamguard.service.protocol import ServiceError


class RequestTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: at most `limit_for(path)` bytes of request body on every HTTP route."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            refusal = ServiceError("request_too_large", RequestTooLarge(limit).detail, status=413)
            response = JSONResponse(refusal.body(), status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # FastAPI passes an HTTPException from a body read on
                    raise RequestTooLarge(limit)
            return message

        await self.app(scope, bounded, send)
