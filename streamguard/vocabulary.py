"""The words every layer uses about a stream: its kind, its state, and its record (what the
shared store keeps and the API shows). It depends on nothing else in the package, so the
service's protocol and the cluster's store both import it and neither spells the states again."""

from __future__ import annotations

from enum import StrEnum

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
