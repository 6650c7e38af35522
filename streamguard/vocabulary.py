"""The words every layer uses about a stream: its kind, its state, and its record (what the
shared store keeps and the API shows), why a worker cuts one short, and the HTTP headers of the
cluster's placement. It depends on nothing else in the package, so the service's protocol and
the cluster's store both import it and neither spells them again."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import BaseModel


class StreamKind(StrEnum):
    FILE = "file"
    RTSP = "rtsp"
    WEBRTC = "webrtc"


class StreamState(StrEnum):
    STARTING = "starting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    ERROR = "error"


# A worker is (or should be) running a stream in one of these; the others are final.
ACTIVE_STATES = frozenset({StreamState.STARTING, StreamState.LIVE, StreamState.RECONNECTING})
FINAL_STATES = frozenset({StreamState.ENDED, StreamState.ERROR})


class StreamSummary(BaseModel):
    """A stream's durable record as the API shows it."""

    id: str
    kind: StreamKind
    source: str  # the camera URL without credentials, or what the peer or file is
    state: StreamState
    error: str | None
    created: float  # unix seconds
    worker: str  # the process that holds the stream's cache


class StreamRecord(StreamSummary):
    """What the store keeps: the summary, and what another worker needs to run an RTSP camera
    again when its worker dies. The API never shows these two fields."""

    reopen_url: str | None = None  # the camera URL with its credentials
    owner: str | None = None  # the digest of the token that opened it (its quota)


# Why a worker let a stream or an answer go: it is shutting down (SIGTERM or an admin's drain).
# The `stream.ending` event's reason, the error code of an answer the drain cut, and that
# answer's `finish_reason` in the answer log.
WORKER_DRAINING: Final = "worker_draining"

# Why the service ended a WebRTC stream whose peer never said goodbye: no media came for
# `service.webrtc_media_timeout_s` (a crashed tab, a lost network). The `stream.ending` event's
# reason and the `stream.media_timeout` log event's name say it.
MEDIA_TIMEOUT: Final = "media_timeout"

# Placement: a full worker sends a new stream on to one with room, as a 307 to the target URL.
# A browser cannot follow that one itself (a cross-origin redirect drops the Authorization
# header, and fetch cannot read a redirect's Location), so a client that sends
# `StreamGuard-Redirect: manual` gets the refusal (503 `service_full`) naming the target in its
# body (`worker_url`) and in `StreamGuard-Worker-Url`, and sends the request there itself.
REDIRECT_HEADER: Final = "StreamGuard-Redirect"
WORKER_URL_HEADER: Final = "StreamGuard-Worker-Url"
