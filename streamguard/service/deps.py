"""What the API's routes take from the request (FastAPI dependencies) and share, in one place
the route modules import, so no route module imports another (`app` includes `webrtc`'s router)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from streamguard.service.auth import Caller, require_token
from streamguard.service.protocol import ApiError
from streamguard.service.remote import ClusterStreams
from streamguard.service.streams import StreamRegistry

ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ApiError} for status in (401, 403, 404, 413, 422, 429, 503)
}

Authenticated = Annotated[Caller, Depends(require_token)]


def registry_of(request: Request) -> StreamRegistry:
    return request.app.state.registry


Registry = Annotated[StreamRegistry, Depends(registry_of)]


def cluster_of(request: Request) -> ClusterStreams:
    return request.app.state.cluster


Cluster = Annotated[ClusterStreams, Depends(cluster_of)]
