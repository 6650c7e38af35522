"""WebRTC signalling: `POST /v1/streams/webrtc` answers a browser's SDP offer and starts its stream.

One round trip, no trickle ICE: the offer carries its candidates, the answer carries the
server's. The stream's source owns the peer connection: deleting the stream, the peer leaving,
or the service shutting down closes it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from streamguard.ingest.webrtc import InvalidOffer, WebRtcSource, check_offer
from streamguard.service.deps import ERROR_RESPONSES, Authenticated, Cluster, Registry
from streamguard.service.protocol import ApiError, ServiceError, StreamKind, WebRtcAnswer, WebRtcOffer

router = APIRouter(prefix="/v1", tags=["streams"], responses={**ERROR_RESPONSES, 400: {"model": ApiError}})


@router.post(
    "/streams/webrtc",
    status_code=201,
    response_model=WebRtcAnswer,
    responses={307: {"description": "this worker is full: the same request to a worker with room"}},
)
async def create_webrtc_stream(
    body: Annotated[WebRtcOffer, Body()],
    caller: Authenticated,
    registry: Registry,
    cluster: Cluster,
    request: Request,
) -> WebRtcAnswer | Response:
    """Start a stream from a WebRTC peer sending one audio and/or one video track. Send the
    offer once ICE gathering is complete; a malformed or unanswerable offer is `invalid_sdp`.
    A full worker sends the offer on (307) to a worker of the cluster with room."""
    try:
        offer = check_offer(body.sdp, body.type)
    except InvalidOffer as exc:
        raise ServiceError("invalid_sdp", str(exc)) from None
    settings = registry.settings
    source = WebRtcSource(settings.chunk, max_pending_chunks=settings.service.max_pending_chunks)
    peer = request.client.host if request.client else "an unknown address"
    try:
        answer = await source.accept(body.sdp)
        stream = await registry.open(
            StreamKind.WEBRTC, source, f"webrtc {offer.describe()} from {peer}", caller.owner
        )
    except InvalidOffer as exc:
        await source.close()
        raise ServiceError("invalid_sdp", str(exc)) from None
    except ServiceError as refused:  # no stream came of it (quota, full): close the connection
        await source.close()
        return await cluster.elsewhere(refused, request)
    except BaseException:  # no stream came of it (shutdown): close the connection
        await source.close()
        raise
    return WebRtcAnswer(stream_id=stream.id, sdp=answer, stream=stream.info())
