"""WebRTC ingest and signalling: real aiortc peers sending generated audio and video, to the
real service on the tiny model and to a bare `WebRtcSource`; scripted tracks on an injected
clock for alignment and the bounded backlog. Waits are bounded polls; nothing asserts on time."""

from __future__ import annotations

import asyncio
import fractions
import json
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from service_helpers import (
    ENDED_WITHIN_S,
    MEDIA_TIMEOUT_S,
    TIMEOUT_S,
    TOKEN,
    receive,
    receive_until,
    serve,
    tiny_settings,
    wait_until,
)

from streamguard.backbones import load_backbone
from streamguard.cluster import MemoryStore
from streamguard.config import ChunkSettings
from streamguard.engine.scheduler import Scheduler
from streamguard.ingest.chunker import AVChunk
from streamguard.ingest.synthetic import generate_audio, generate_frames
from streamguard.ingest.webrtc import InvalidOffer, WebRtcSource, check_offer
from streamguard.service import create_app
from streamguard.service.metrics import ServiceMetrics
from streamguard.service.protocol import StreamKind
from streamguard.service.streams import StreamRegistry

T = TypeVar("T")

VIDEO_RATE, AUDIO_RATE = 90000, 48000  # RTP clocks
FPS = 15
AUDIO_FRAME = 960  # 20 ms at 48 kHz, as Opus sends it
QUOTA_TOKEN = "quota-token"
SETTINGS = ChunkSettings()


# -- generated media -------------------------------------------------------------------------


def video_frame(picture: np.ndarray, index: int, pts_offset: int = 0) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
    frame.pts = pts_offset + index * VIDEO_RATE // FPS
    frame.time_base = fractions.Fraction(1, VIDEO_RATE)
    return frame


def audio_frame(samples: np.ndarray, index: int, pts_offset: int = 0) -> av.AudioFrame:
    """48 kHz s16 stereo, as aiortc's Opus decoder hands it out."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None], format="s16", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    frame.pts = pts_offset + index * AUDIO_FRAME
    frame.time_base = fractions.Fraction(1, AUDIO_RATE)
    return frame


class PacedTrack(MediaStreamTrack):
    """A live source: frames from `make(i)` delivered at real time, `period` seconds apart."""

    def __init__(self, kind: str, period: float, make: Callable[[int], av.VideoFrame | av.AudioFrame]):
        super().__init__()
        self.kind = kind
        self._period = period
        self._make = make
        self._sent = 0
        self._began: float | None = None
        self.held = False  # set: the source produces nothing more, though the track stays live

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.held:
            await asyncio.Event().wait()
        self._began = self._began or time.monotonic()
        await asyncio.sleep(max(0.0, self._began + self._sent * self._period - time.monotonic()))
        self._sent += 1
        return self._make(self._sent - 1)


def moving_video(seconds: float = 120) -> PacedTrack:
    pictures = generate_frames(seconds, width=128, height=96, fps=FPS, motion="moving")
    return PacedTrack("video", 1 / FPS, lambda i: video_frame(next(pictures), i))


def tone_audio(seconds: float = 120) -> PacedTrack:
    tone = generate_audio(seconds, AUDIO_RATE)[0]
    return PacedTrack(
        "audio",
        AUDIO_FRAME / AUDIO_RATE,
        lambda i: audio_frame(tone[i * AUDIO_FRAME : (i + 1) * AUDIO_FRAME], i),
    )


def new_peer(audio: bool, video: bool) -> RTCPeerConnection:
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video:
        peer.addTrack(moving_video())
    if audio:
        peer.addTrack(tone_audio())
    return peer


async def make_offer(peer: RTCPeerConnection) -> str:
    await peer.setLocalDescription(await peer.createOffer())  # gathers every candidate
    return peer.localDescription.sdp


class ClientPeer:
    """A real aiortc peer sending a moving picture and a tone, on its own event loop thread
    (the service runs on another)."""

    def __init__(self, audio: bool = True, video: bool = True):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.pc = self._call(self._create(audio, video))

    async def _create(self, audio: bool, video: bool) -> RTCPeerConnection:
        return new_peer(audio, video)

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(TIMEOUT_S)

    def offer(self) -> str:
        return self._call(make_offer(self.pc))

    def accept(self, answer: str) -> None:
        self._call(self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer")))

    def hold(self) -> None:
        """Stop sending media without hanging up (a frozen or crashed tab): no BYE, while the
        connection's RTCP and ICE consent go on."""
        for sender in self.pc.getSenders():
            sender.track.held = True

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self.pc.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT_S)
            self._loop.close()


# -- the service -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(checkpoint):
    settings = tiny_settings(checkpoint, tokens=[TOKEN, QUOTA_TOKEN], max_streams_per_token=2)
    with serve(create_app(settings)) as live:
        yield live


@pytest.fixture
def peer() -> Iterator[ClientPeer]:
    client = ClientPeer()
    yield client
    client.close()


@pytest.fixture(scope="module")
def offer_sdp() -> str:
    """A real offer (audio and video, gathered candidates) to corrupt."""
    client = ClientPeer()
    try:
        return client.offer()
    finally:
        client.close()


def connect(service, client: ClientPeer) -> dict:
    response = service.http.post("/v1/streams/webrtc", json={"sdp": client.offer(), "type": "offer"})
    assert response.status_code == 201, response.text
    created = response.json()
    client.accept(created["sdp"])
    return created


def stream_ids(service, token: str = TOKEN) -> set[str]:
    """The streams `token` sees (those it opened)."""
    listed = service.http.get("/v1/streams", headers={"Authorization": f"Bearer {token}"})
    return {stream["id"] for stream in listed.json()["streams"]}


def test_a_peer_streams_audio_and_video_and_gets_answers(service, peer):
    created = connect(service, peer)
    stream_id = created["stream_id"]
    assert created["type"] == "answer" and created["sdp"].startswith("v=0")
    assert "a=candidate:" in created["sdp"]  # non-trickle: the answer carries the server's candidates
    assert created["stream"]["id"] == stream_id and created["stream"]["kind"] == "webrtc"
    assert created["stream"]["source"] == "webrtc audio+video from 127.0.0.1"

    def two_full_chunks():
        stream = service.stream(stream_id)
        last = stream["stats"]["last_chunk"]
        return stream if last is not None and last["index"] >= 1 else None

    stream = wait_until(two_full_chunks, "two chunks from the peer")
    stats = stream["stats"]
    assert stream["state"] == "live" and stats["chunks_received"] >= 2
    assert stats["tokens_in"] >= stats["tokens_kept"] > 0 and stats["kv_tokens"] > 0
    last = stats["last_chunk"]
    assert not last["audio_missing"] and last["audio_tokens"] > 0  # the tone, on the video's clock
    assert last["video_tokens_in"] > 0 and last["grid"] is not None

    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ws.send(json.dumps({"type": "question.ask", "id": "q1", "text": "What moves?", "max_tokens": 4}))
        events = receive_until(ws, lambda event: event["type"] == "answer.done")
    deltas = [event for event in events if event["type"] == "answer.delta"]
    assert deltas and events[-1]["text"] == "".join(event["text"] for event in deltas)
    assert events[-1]["stats"]["context_tokens"] > 0

    received = stats["chunks_received"]
    peer.close()  # the peer leaves: the stream ends, its chunks flushed
    ended = wait_until(
        lambda: (s := service.stream(stream_id))["state"] == "ended" and s, "the stream to end"
    )
    assert ended["error"] is None and ended["stats"]["chunks_received"] >= received
    assert service.http.delete(f"/v1/streams/{stream_id}").status_code == 200


def test_deleting_the_stream_closes_the_peer_connection(service, peer):
    stream_id = connect(service, peer)["stream_id"]
    wait_until(lambda: peer.pc.connectionState == "connected", "the peer to connect")
    assert service.http.delete(f"/v1/streams/{stream_id}").status_code == 200
    wait_until(lambda: peer.pc.connectionState in ("closed", "failed"), "the server to hang up")
    assert stream_id not in stream_ids(service)


def test_shutting_the_service_down_closes_its_peer_connections(checkpoint, peer):
    with serve(create_app(tiny_settings(checkpoint))) as live:
        connect(live, peer)
        wait_until(lambda: peer.pc.connectionState == "connected", "the peer to connect")
    wait_until(lambda: peer.pc.connectionState == "closed", "the server to hang up")


def test_the_stream_quota_holds_for_offers(service):
    headers = {"Authorization": f"Bearer {QUOTA_TOKEN}"}
    peers = [ClientPeer(), ClientPeer(), ClientPeer()]
    created = []
    try:
        offers = [{"sdp": client.offer(), "type": "offer"} for client in peers]
        created = [
            service.http.post("/v1/streams/webrtc", json=offer, headers=headers) for offer in offers[:2]
        ]
        assert [response.status_code for response in created] == [201, 201]
        before = stream_ids(service, QUOTA_TOKEN)
        refused = service.http.post("/v1/streams/webrtc", json=offers[2], headers=headers)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_streams"
        assert stream_ids(service, QUOTA_TOKEN) == before
    finally:
        for response in created:
            service.http.delete(f"/v1/streams/{response.json()['stream_id']}", headers=headers)
        for client in peers:
            client.close()


class SilentTrack(MediaStreamTrack):
    """A camera that never delivers a frame: the peer connects and sends nothing."""

    kind = "video"

    async def recv(self) -> av.VideoFrame:
        await asyncio.Event().wait()
        raise MediaStreamError


class SilentPeer(ClientPeer):
    async def _create(self, audio: bool, video: bool) -> RTCPeerConnection:
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer.addTrack(SilentTrack())
        return peer


def test_a_peer_that_never_sends_media_ends_and_stops_holding_its_quota_and_slot(checkpoint):
    # one stream per token and per worker: the silent peer holds both until it ends (8 s: a
    # sending peer's first 2-s chunk comes well within it)
    settings = tiny_settings(checkpoint, first_media_timeout_s=8.0, max_streams_per_token=1, max_streams=1)
    silent, sending = SilentPeer(), ClientPeer()
    try:
        with serve(create_app(settings)) as live:
            stream_id = connect(live, silent)["stream_id"]
            wait_until(lambda: silent.pc.connectionState == "connected", "the silent peer to connect")
            failed = wait_until(
                lambda: (s := live.stream(stream_id))["state"] == "error" and s, "the silent stream to end"
            )
            assert "no media within 8 s" in failed["error"]
            wait_until(lambda: silent.pc.connectionState in ("closed", "failed"), "the server to hang up")
            second = connect(live, sending)["stream_id"]  # within the quota and the worker's room
            wait_until(lambda: live.stream(second)["stats"]["chunks_received"] >= 1, "media from the second")
            live.http.delete(f"/v1/streams/{second}")
    finally:
        silent.close()
        sending.close()


def media_timeout_settings(checkpoint):
    return tiny_settings(checkpoint, webrtc_media_timeout_s=MEDIA_TIMEOUT_S, max_streams_per_token=1)


class StillPeer(ClientPeer):
    """A camera on a static scene: the same picture frame after frame, as a browser sends it."""

    async def _create(self, audio: bool, video: bool) -> RTCPeerConnection:
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        picture = np.full((96, 128, 3), 90, np.uint8)
        peer.addTrack(PacedTrack("video", 1 / FPS, lambda i: video_frame(picture, i)))
        return peer


def test_a_peer_that_goes_silent_without_hanging_up_ends_its_stream_and_frees_its_quota(checkpoint, caplog):
    peer, again = ClientPeer(), ClientPeer()
    try:
        with serve(create_app(media_timeout_settings(checkpoint))) as live:
            stream_id = connect(live, peer)["stream_id"]
            wait_until(lambda: live.stream(stream_id)["stats"]["chunks_received"] >= 1, "media from the peer")
            with live.ws(f"/v1/streams/{stream_id}/ws") as ws:
                peer.hold()
                ended = wait_until(
                    lambda: (s := live.stream(stream_id))["state"] == "ended" and s,
                    "the silent stream to end",
                    timeout_s=ENDED_WITHIN_S,
                )
                told = receive(ws)  # the ended stream still answers: the socket stays open
            assert told == {"type": "stream.ending", "stream": stream_id, "reason": "media_timeout"}
            assert f"no media from the peer for {MEDIA_TIMEOUT_S:g} s" in ended["error"]
            assert f"stream.media_timeout stream={stream_id} reason=media_timeout" in caplog.text
            wait_until(lambda: peer.pc.connectionState in ("closed", "failed"), "the server to hang up")
            second = connect(live, again)["stream_id"]  # the token's one stream slot is free again
            wait_until(
                lambda: live.stream(second)["stats"]["chunks_received"] >= 1, "media from the new peer"
            )
    finally:
        peer.close()
        again.close()


def test_a_peer_sending_a_still_picture_stays_live_past_the_media_timeout(checkpoint):
    peer = StillPeer()
    try:
        with serve(create_app(media_timeout_settings(checkpoint))) as live:
            stream_id = connect(live, peer)["stream_id"]
            # the first chunk, then media longer than the timeout past it
            after = 2 + int(MEDIA_TIMEOUT_S / SETTINGS.seconds)
            stream = wait_until(
                lambda: (s := live.stream(stream_id))["stats"]["chunks_received"] >= after and s,
                f"{after} chunks from the peer",
            )
            assert stream["state"] == "live" and stream["error"] is None
    finally:
        peer.close()


def test_a_media_timeout_no_longer_than_a_chunk_is_refused(checkpoint):
    # a sending peer's chunks come a chunk apart: such a timeout would end every stream
    with pytest.raises(ValueError, match=r"webrtc_media_timeout_s \(2 s\) must exceed chunk.seconds"):
        tiny_settings(checkpoint, webrtc_media_timeout_s=SETTINGS.seconds)


def test_offers_need_a_valid_token(service, offer_sdp):
    body = {"sdp": offer_sdp, "type": "offer"}
    missing = service.http.post("/v1/streams/webrtc", json=body, headers={"Authorization": ""})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_token"
    wrong = service.http.post("/v1/streams/webrtc", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invalid_token"


def without(sdp: str, pattern: str) -> str:
    return "".join(line for line in sdp.splitlines(keepends=True) if not re.match(pattern, line))


def video_codecs_renamed(sdp: str, name: str) -> str:
    return re.sub(r"(a=rtpmap:\d+ )(VP8|H264|rtx)/", rf"\g<1>{name}/", sdp)


def second_video(sdp: str) -> str:
    start = sdp.index("m=video")
    section = sdp[start:] if "m=audio" not in sdp[start:] else sdp[start : sdp.index("m=audio", start)]
    return sdp + section.replace("a=mid:0", "a=mid:9")


MALFORMED = {
    "empty": (lambda sdp: "", "offer", "the SDP is empty"),
    "blank": (lambda sdp: " \r\n", "offer", "the SDP is empty"),
    "not SDP": (lambda sdp: "hello", "offer", "must start with 'v=0'"),
    "an answer": (lambda sdp: sdp, "answer", "type must be 'offer'"),
    "no media": (lambda sdp: sdp[: sdp.index("m=")], "offer", "no media sections"),
    "data only": (
        lambda sdp: sdp[: sdp.index("m=")] + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        "offer",
        "no audio or video section (only application)",
    ),
    "receive only": (lambda sdp: sdp.replace("a=sendrecv", "a=recvonly"), "offer", "sends no audio or video"),
    "unparseable": (
        lambda sdp: sdp.replace("a=setup:actpass", "a=setup:sideways"),
        "offer",
        "could not be parsed",
    ),
    "no ICE credentials": (lambda sdp: without(sdp, "a=ice-pwd"), "offer", "no ICE credentials"),
    "no fingerprint": (lambda sdp: without(sdp, "a=fingerprint"), "offer", "no DTLS parameters"),
    "no mid": (lambda sdp: without(sdp, "a=mid:0"), "offer", "no media id (a=mid)"),
    "no direction": (lambda sdp: sdp.replace("a=sendrecv\r\n", "", 1), "offer", "no direction"),
    "no rtcp-mux": (lambda sdp: without(sdp, "a=rtcp-mux"), "offer", "RTCP multiplexing"),
    "no candidates": (lambda sdp: without(sdp, "a=candidate"), "offer", "no ICE candidates"),
    "unknown codecs": (lambda sdp: video_codecs_renamed(sdp, "H265"), "offer", "offers codecs H265"),
    "two video tracks": (second_video, "offer", "sends 2 video tracks"),
    "oversized": (lambda sdp: sdp + "a=x-pad:" + "x" * 70000 + "\r\n", "offer", "the limit is 65536"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_offers_are_invalid_sdp_and_leave_no_stream(service, offer_sdp, case):
    corrupt, sdp_type, message = MALFORMED[case]
    before = stream_ids(service)
    response = service.http.post("/v1/streams/webrtc", json={"sdp": corrupt(offer_sdp), "type": sdp_type})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_sdp" and message in error["message"], error
    assert stream_ids(service) == before


def test_a_body_without_sdp_is_an_invalid_request(service):
    response = service.http.post("/v1/streams/webrtc", json={"type": "offer"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


# -- the source on its own -------------------------------------------------------------------


async def test_any_offer_missing_a_line_is_answered_or_refused_as_invalid(offer_sdp):
    """Never an aiortc exception: each line of a real offer left out in turn."""
    lines = offer_sdp.splitlines(keepends=True)
    outcomes = set()
    for skipped in range(len(lines)):
        sdp = "".join(lines[:skipped] + lines[skipped + 1 :])
        source = WebRtcSource(SETTINGS)
        try:
            answer = await source.accept(sdp)
            assert answer.startswith("v=0")
            outcomes.add("answered")
        except InvalidOffer:
            outcomes.add("refused")
        finally:
            await source.close()
    assert outcomes == {"answered", "refused"}


@pytest.mark.parametrize(("audio", "video"), [(True, False), (False, True)])
async def test_a_single_track_offer_streams_with_the_other_track_flagged_missing(audio, video):
    client, source = new_peer(audio, video), WebRtcSource(SETTINGS)
    offer = await make_offer(client)
    assert check_offer(offer, "offer").describe() == ("audio" if audio else "video")
    answer = await source.accept(offer)
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    chunks = source.chunks()
    try:
        first = await asyncio.wait_for(anext(chunks), TIMEOUT_S)
        await client.close()
        rest = [chunk async for chunk in chunks]  # the peer left: the source ends
    finally:
        await client.close()
        await source.close()
    assert first.index == 0 and [chunk.index for chunk in rest] == list(range(1, len(rest) + 1))
    assert first.video_missing is audio and first.audio_missing is video
    if video:
        assert len(first.frames) == SETTINGS.frames_per_chunk
        assert source.stats.video_frames_received > source.stats.video_frames_converted > 0
    else:
        assert first.audio_coverage == 1.0 and np.abs(first.audio).max() > 0.1


async def test_chunk_0_of_an_audio_and_video_peer_has_all_its_audio():
    # The peer's audio starts a few ms after its video: it starts with the stream, so the first
    # chunk is not flagged audio_missing for want of those few ms.
    client, source = new_peer(audio=True, video=True), WebRtcSource(SETTINGS)
    answer = await source.accept(await make_offer(client))
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    chunks = source.chunks()
    try:
        first = await asyncio.wait_for(anext(chunks), TIMEOUT_S)
    finally:
        await client.close()
        await source.close()
    assert first.index == 0 and len(first.frames) == SETTINGS.frames_per_chunk
    assert first.audio_coverage == 1.0 and not first.audio_missing


class Wire:
    """Scripted deliveries for several tracks, handed out in arrival order; each sets the
    receiver clock to its arrival time as it is received. `observe` runs before each delivery."""

    def __init__(self, deliveries: list[tuple[float, str, Any]], observe: Callable[[], None] = lambda: None):
        self._deliveries = sorted(deliveries, key=lambda item: item[0])
        self._next = 0
        self._turn = asyncio.Condition()
        self._observe = observe
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def track(self, kind: str) -> MediaStreamTrack:
        wire = self

        class Scripted(MediaStreamTrack):
            async def recv(self) -> Any:
                return await wire.receive(kind)

        track = Scripted()
        track.kind = kind
        return track

    async def receive(self, kind: str) -> Any:
        async with self._turn:
            await self._turn.wait_for(self._done_or_turn_of(kind))
            if self._next == len(self._deliveries):
                raise MediaStreamError  # what aiortc raises once a track has ended
            self._observe()
            self.now, _, frame = self._deliveries[self._next]
            self._next += 1
            self._turn.notify_all()
            return frame

    def _done_or_turn_of(self, kind: str) -> Callable[[], bool]:
        return lambda: self._next == len(self._deliveries) or self._deliveries[self._next][1] == kind


def scripted_av(
    seconds: float, video_start: float, event: float, jitter_s: float = 0.03, seed: int = 0
) -> list[tuple[float, str, Any]]:
    """Deliveries of audio from wall time 0 and video from `video_start` (on a receiver clock
    that reads 1000 at wall time 0), each RTP clock with its own random offset; from wall time
    `event` on the picture is white and a tone sounds. Frames arrive up to `jitter_s` late, the
    first of each track on time."""
    rng = np.random.default_rng(seed)
    audio_offset, video_offset = (int(x) for x in rng.integers(0, 2**31, 2))
    deliveries = []
    for i in range(round(seconds * AUDIO_RATE / AUDIO_FRAME)):
        t = i * AUDIO_FRAME / AUDIO_RATE
        times = t + np.arange(AUDIO_FRAME) / AUDIO_RATE
        samples = np.where(times >= event, 0.5 * np.sin(2 * np.pi * 440 * times), 0.0)
        late = rng.uniform(0, jitter_s) if i else 0.0
        deliveries.append((1000.0 + t + late, "audio", audio_frame(samples, i, audio_offset)))
    for i in range(round((seconds - video_start) * FPS)):
        t = video_start + i / FPS
        picture = np.full((32, 32, 3), 255 if t >= event else 0, np.uint8)
        late = rng.uniform(0, jitter_s) if i else 0.0
        deliveries.append((1000.0 + t + late, "video", video_frame(picture, i, video_offset)))
    return deliveries


async def read_all(source: WebRtcSource) -> list[AVChunk]:
    return [chunk async for chunk in source.chunks()]


async def test_audio_and_video_share_one_timeline():
    # the video starts 0.7 s after the audio; both show an event at wall time 2.8 s
    wire = Wire(scripted_av(seconds=6.0, video_start=0.7, event=2.8))
    source = WebRtcSource(SETTINGS, clock=wire.clock)
    source.add_track(wire.track("audio"))
    source.add_track(wire.track("video"))
    chunks = await asyncio.wait_for(read_all(source), TIMEOUT_S)
    assert [chunk.index for chunk in chunks] == [0, 1, 2]
    assert not any(chunk.audio_missing or chunk.video_missing for chunk in chunks)
    white = [[int(picture.mean() > 127) for picture in chunk.frames] for chunk in chunks]
    # stream time 0 is the first audio frame; instants every 0.5 s; the event at 2.8 s
    assert white == [[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    onset = int(np.argmax(np.abs(chunks[1].audio) > 0.05))
    assert abs(onset - round(0.8 * SETTINGS.sample_rate)) <= 16  # within 1 ms of 2.8 s
    assert not np.abs(chunks[0].audio).max() > 0.05


async def test_a_consumer_that_does_not_read_holds_a_bounded_backlog():
    backlog: list[int] = []
    wire = Wire(
        scripted_av(seconds=20.0, video_start=0.0, event=0.0), observe=lambda: backlog.append(source.backlog)
    )
    source = WebRtcSource(SETTINGS, clock=wire.clock, max_pending_chunks=3)
    source.add_track(wire.track("audio"))
    source.add_track(wire.track("video"))
    # nobody reads while all 20 s arrive: the readers drain the tracks regardless
    await asyncio.wait_for(ended(source), TIMEOUT_S)
    stats = source.stats
    assert max(backlog) <= 3 and source.backlog == 3
    assert stats.chunks_emitted == 10 and stats.chunks_dropped == source.chunks_dropped == 7
    assert stats.video_frames_received == 20 * FPS and stats.audio_frames_received == 1000
    assert stats.video_frames_converted == 10 * SETTINGS.frames_per_chunk  # of 300 received
    kept = await read_all(source)
    assert [chunk.index for chunk in kept] == [7, 8, 9]  # the newest


async def ended(source: WebRtcSource) -> None:
    while not source.ended:
        await asyncio.sleep(0.01)


async def test_chunks_the_source_dropped_count_as_received_and_shed_in_the_stream(checkpoint):
    settings = tiny_settings(checkpoint)
    scheduler = Scheduler(settings.service.max_pending_chunks)
    scheduler.start()
    metrics = ServiceMetrics()
    registry = StreamRegistry(
        settings, load_backbone(settings.model, settings.chunk), scheduler, metrics, MemoryStore()
    )
    wire = Wire(scripted_av(seconds=20.0, video_start=0.0, event=0.0))
    source = WebRtcSource(SETTINGS, clock=wire.clock, max_pending_chunks=3)
    source.add_track(wire.track("audio"))
    source.add_track(wire.track("video"))
    try:
        await asyncio.wait_for(ended(source), TIMEOUT_S)  # 10 chunks cut before the stream reads: 7 dropped
        stream = await registry.open(StreamKind.WEBRTC, source, "scripted peer", owner=TOKEN)
        deadline = time.monotonic() + TIMEOUT_S
        while stream.info().stats.chunks_processed < 3:
            assert time.monotonic() < deadline, "timed out waiting for the kept chunks"
            await asyncio.sleep(0.05)
        stats = stream.info().stats
        text = metrics.exposition().decode()
    finally:
        await registry.close()
        await scheduler.stop()
    assert (stats.chunks_received, stats.chunks_processed, stats.chunks_shed) == (10, 3, 7)
    assert f'streamguard_chunks_dropped_total{{reason="shed",stream="{stream.id}"}} 7.0' in text
    assert f'streamguard_chunks_received_total{{stream="{stream.id}"}} 10.0' in text
