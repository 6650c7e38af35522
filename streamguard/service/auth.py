"""Who may use the service: bearer tokens, and the limits each token works under."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from streamguard.config import ServiceSettings
from streamguard.service.protocol import ServiceError

# Websocket close codes: 4000 + the HTTP status the same refusal gets over REST.
WS_CLOSE_OFFSET = 4000


def presented_token(authorization: str | None, query_token: str | None = None) -> str | None:
    """The token from `Authorization: Bearer <token>`, else from `?token=` (browsers cannot set
    headers on a websocket)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def authenticate(settings: ServiceSettings, token: str | None) -> str:
    """The caller's token if it is one of the service's: missing → 401, wrong → 403."""
    if not token:
        raise ServiceError(
            "missing_token",
            "a bearer token is required: send 'Authorization: Bearer <token>' (or ?token= on a websocket)",
            status=401,
        )
    # compare against every token in constant time, so timing tells nothing about a near miss
    matches = [hmac.compare_digest(token.encode(), known.encode()) for known in settings.tokens]
    if not any(matches):
        raise ServiceError("invalid_token", "the token is not valid for this service", status=403)
    return token


def owner_of(token: str) -> str:
    """Who holds a stream, for its token's quota: a digest, so stream records that other workers
    read (to take a camera over) carry no token."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def require_token(request: Request) -> str:
    """FastAPI dependency for REST endpoints."""
    settings: ServiceSettings = request.app.state.settings.service
    return authenticate(settings, presented_token(request.headers.get("authorization")))


def check_stream_quota(settings: ServiceSettings, streams_held: int) -> None:
    """A token holds at most `max_streams_per_token` streams (ended ones count until deleted or
    expired: they still hold their cache for questions)."""
    if streams_held >= settings.max_streams_per_token:
        raise ServiceError(
            "too_many_streams",
            f"this token already holds {streams_held} streams (the limit is "
            f"{settings.max_streams_per_token}); DELETE one first",
            status=429,
        )
