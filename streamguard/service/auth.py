"""Who may use the service: bearer tokens, what each one sees, and the limits it works under.

A token opens streams as their owner. A user token (`Role.USER`, also any plain string in
`service.tokens`) sees, asks on, reads the answer log of and deletes only the streams it opened:
another token's stream is `unknown_stream` (404), as if it did not exist, so stream ids leak
nothing. An admin token (`Role.ADMIN`) sees every stream (the operator's dashboard).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from streamguard.config import Role, ServiceSettings, TokenEntry
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


@dataclass(frozen=True)
class Caller:
    """An authenticated token: its holder's name and role, and `owner`, the digest its streams
    are recorded under (in Redis too, so it holds on every worker)."""

    name: str
    role: Role
    owner: str

    @property
    def sees_all_streams(self) -> bool:
        return self.role is Role.ADMIN

    def may_see(self, owner: str | None) -> bool:
        """Whether a stream opened by `owner` exists for this caller."""
        return self.sees_all_streams or owner == self.owner


def authenticate(settings: ServiceSettings, token: str | None) -> Caller:
    """Who holds the token, if it is one of the service's: missing → 401, wrong → 403."""
    if not token:
        raise ServiceError(
            "missing_token",
            "a bearer token is required: send 'Authorization: Bearer <token>' (or ?token= on a websocket)",
            status=401,
        )
    entries = [TokenEntry(token=e) if isinstance(e, str) else e for e in settings.tokens]
    # compare against every token in constant time, so timing tells nothing about a near miss
    presented = token.encode(errors="replace")
    matches = [hmac.compare_digest(presented, entry.token.encode()) for entry in entries]
    if not any(matches):
        raise ServiceError("invalid_token", "the token is not valid for this service", status=403)
    entry = entries[matches.index(True)]
    owner = owner_of(entry.token)
    return Caller(name=entry.name or f"token {owner[:8]}", role=entry.role, owner=owner)


def check_origin(settings: ServiceSettings, origin: str | None) -> None:
    """A browser's websocket from a page on an origin `ws_origins` does not list is refused
    (403), so another site cannot use a token a browser holds; clients that send no Origin (not
    browsers) are not affected."""
    if settings.ws_origins is None or origin is None:
        return
    if origin.rstrip("/").lower() not in {allowed.rstrip("/").lower() for allowed in settings.ws_origins}:
        raise ServiceError(
            "origin_not_allowed",
            "websockets from this page's origin are not allowed (service.ws_origins)",
            status=403,
        )


def owner_of(token: str) -> str:
    """Who holds a stream, for its token's quota: a digest, so stream records that other workers
    read (to take a camera over) carry no token."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def require_token(request: Request) -> Caller:
    """FastAPI dependency for REST endpoints."""
    settings: ServiceSettings = request.app.state.settings.service
    return authenticate(settings, presented_token(request.headers.get("authorization")))


def check_stream_quota(settings: ServiceSettings, streams_held: int) -> None:
    """A token runs at most `max_streams_per_token` streams at once (starting, live or
    reconnecting; ended ones do not count)."""
    if streams_held >= settings.max_streams_per_token:
        raise ServiceError(
            "too_many_streams",
            f"this token already holds {streams_held} streams (the limit is "
            f"{settings.max_streams_per_token}); DELETE one first",
            status=429,
        )
