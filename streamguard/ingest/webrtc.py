"""WebRTC ingest: an aiortc peer connection that receives one audio and one video track and
cuts them into chunks with the `Chunker`.

Signalling is one round trip without trickle ICE: `check_offer` refuses a malformed offer
before anything is set up, `WebRtcSource.accept` answers it (aiortc completes ICE gathering in
setLocalDescription, so the answer carries every candidate), and `chunks()` yields the stream's
chunks until the peer leaves.

Timeline
  aiortc stamps each track's frames with its RTP clock (90 kHz video, 48 kHz audio), re-based to
  0 at that track's first packet, so the two tracks share no origin. Each track is pinned to the
  receiver's monotonic clock at the arrival of its first frame (stream time = arrival of the first
  frame + media time since it) and then follows its own media clock, so network jitter does not
  reach the timeline. A/V stay aligned to within the difference of the two first frames' transit
  delays (a few tens of ms; the video is sampled every 500 ms). RTCP sender reports would be
  exact, but aiortc keeps only their NTP half (for its receiver reports), not the RTP mapping.
  Later frames never move the pin: the chunker takes a backward step as a discontinuity.

Backlog
  aiortc queues decoded frames without bound, so one reader task per track drains its track
  continuously whatever the consumer does. Frames go straight into the chunker, which keeps only
  the latest video frame and converts a frame to RGB only when it is sampled (2 fps): the others
  are dropped unconverted. Finished chunks wait in a queue of `max_pending_chunks`; when a slow
  consumer lets it fill, the oldest chunk is dropped and counted. Held media is thereby bounded:
  the pending chunks, the chunk being built, and one raw frame.

End
  The stream ends when every track has ended (the peer closed or sent RTCP BYE) or the
  connection fails or closes; the chunker is then flushed. A peer that vanishes without a BYE
  is noticed by ICE consent freshness only some 30 s later, so the service hangs up sooner on
  a peer that sent no media for `service.webrtc_media_timeout_s` (leaving `chunks()`, which
  closes the connection and flushes the chunker too). A single-track offer (audio only or
  video only) works: the chunker flags the missing media in every chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import CODECS
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.sdp import MediaDescription, SessionDescription

from streamguard.config import ChunkSettings
from streamguard.ingest.chunker import AVChunk, Chunker
from streamguard.ingest.repeated import RepeatedWarnings

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
DEFAULT_MAX_PENDING_CHUNKS = 4
MEDIA_KINDS = ("audio", "video")
_SENDING = ("sendrecv", "sendonly")  # directions in which the offerer sends media


class InvalidOffer(ValueError):
    """An SDP offer this server cannot answer; the message says why."""


@dataclass(frozen=True)
class OfferSummary:
    """What an offer sends."""

    audio: bool
    video: bool

    def describe(self) -> str:
        return "+".join(kind for kind in MEDIA_KINDS if getattr(self, kind))


def check_offer(sdp: str, sdp_type: str) -> OfferSummary:
    """Refuse, with a specific `InvalidOffer`, an offer this server could not answer or connect.

    aiortc takes some malformed offers halfway and is left broken (it cannot even close), so
    everything it would trip on is checked here first.
    """
    if sdp_type != "offer":
        raise InvalidOffer(f"type must be 'offer' (this endpoint answers offers), got {sdp_type!r}")
    if not sdp.strip():
        raise InvalidOffer("the SDP is empty")
    size = len(sdp.encode())
    if size > MAX_SDP_BYTES:
        raise InvalidOffer(f"the SDP has {size} bytes; the limit is {MAX_SDP_BYTES}")
    if not sdp.lstrip().startswith("v=0"):
        raise InvalidOffer("not an SDP session description: it must start with 'v=0'")
    description = _parse(sdp)
    if not description.media:
        raise InvalidOffer("the offer has no media sections (m= lines)")
    audio_video = [media for media in description.media if media.kind in MEDIA_KINDS]
    if not audio_video:
        kinds = ", ".join(sorted({media.kind for media in description.media}))
        raise InvalidOffer(f"the offer has no audio or video section (only {kinds})")
    sending = [media for media in audio_video if media.direction in _SENDING]
    if not sending:
        raise InvalidOffer("the offer sends no audio or video: its media sections are recvonly or inactive")
    for kind in MEDIA_KINDS:
        count = sum(media.kind == kind for media in sending)
        if count > 1:
            raise InvalidOffer(f"the offer sends {count} {kind} tracks; a stream takes at most one of each")
    _check_sections(description)
    for media in sending:
        _check_sending(media)
    if not any(media.ice_candidates for media in description.media):
        raise InvalidOffer(
            "the offer has no ICE candidates: send it once ICE gathering is complete (no trickle ICE)"
        )
    return OfferSummary(
        audio=any(media.kind == "audio" for media in sending),
        video=any(media.kind == "video" for media in sending),
    )


def _parse(sdp: str) -> SessionDescription:
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser fails with anything from AssertionError to StopIteration
        detail = f": {exc}" if str(exc) else ""
        raise InvalidOffer(f"the SDP could not be parsed ({type(exc).__name__}{detail})") from None


def _check_sections(description: SessionDescription) -> None:
    """What every media section needs: a unique mid that BUNDLE can refer to, a direction for
    audio and video, ICE credentials."""
    mids = []
    for media in description.media:
        where = f"the {media.kind} section"
        mid = media.rtp.muxId
        if not mid:
            raise InvalidOffer(f"{where} has no media id (a=mid)")
        if mid in mids:
            raise InvalidOffer(f"two media sections have the media id {mid!r}")
        mids.append(mid)
        if media.kind in MEDIA_KINDS and media.direction is None:
            raise InvalidOffer(f"{where} has no direction (a=sendrecv, a=sendonly, a=recvonly or a=inactive)")
        if not media.ice.usernameFragment or not media.ice.password:
            raise InvalidOffer(f"{where} has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
    for group in description.group:
        unknown = [item for item in group.items if item not in mids]
        if unknown:
            raise InvalidOffer(f"the {group.semantic} group names media ids {unknown} that no section has")


def _check_sending(media: MediaDescription) -> None:
    """What a section whose media the server receives needs: DTLS, RTCP multiplexing, a codec."""
    where = f"the {media.kind} section"
    if media.dtls is None or not media.dtls.fingerprints:
        raise InvalidOffer(f"{where} has no DTLS parameters (a=fingerprint and a=setup)")
    if not media.rtcp_mux:
        raise InvalidOffer(f"{where} does not use RTCP multiplexing (a=rtcp-mux)")
    if not find_common_codecs(CODECS[media.kind], media.rtp.codecs):
        offered = sorted({codec.name for codec in media.rtp.codecs}) or ["none"]
        supported = sorted({codec.name for codec in CODECS[media.kind] if codec.name != "rtx"})
        raise InvalidOffer(
            f"{where} offers codecs {', '.join(offered)}; this server decodes {', '.join(supported)}"
        )


@dataclass
class WebRtcStats:
    video_frames_received: int = 0
    video_frames_converted: int = 0  # to RGB, as the chunker sampled them; the rest were never converted
    audio_frames_received: int = 0
    chunks_emitted: int = 0
    chunks_dropped: int = 0  # the consumer fell more than `max_pending_chunks` behind


class WebRtcSource:
    """One peer connection's audio and video as a chunk source; see the module docstring.

    `accept` answers an offer; `add_track` is what the connection calls for each incoming track
    (any aiortc `MediaStreamTrack` works). `clock` is the receiver's monotonic clock, injectable
    so tests can script arrival times.
    """

    def __init__(
        self,
        settings: ChunkSettings,
        *,
        max_pending_chunks: int = DEFAULT_MAX_PENDING_CHUNKS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.stats = WebRtcStats()
        self._warnings = RepeatedWarnings(log)
        self._clock = clock
        self._chunker = Chunker(settings, wall_clock=clock)
        self._pending: deque[AVChunk] = deque()
        self._max_pending = max_pending_chunks
        self._wakeup = asyncio.Event()
        self._readers: set[asyncio.Task[None]] = set()
        self._ended = False
        self._failure: Exception | None = None
        # No STUN server: host candidates only (aiortc's default would ask Google's STUN server).
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc.on("track", self.add_track)
        self._pc.on("connectionstatechange", self._connection_changed)

    async def accept(self, sdp: str) -> str:
        """Answer an offer (checked with `check_offer`); the answer SDP carries every local
        candidate. A refused offer raises `InvalidOffer`."""
        offer = check_offer(sdp, "offer")
        self._chunker.expect_tracks(video=offer.video, audio=offer.audio)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await self._pc.createAnswer()
        except Exception as exc:  # both only read the client's SDP: any failure is the offer's
            raise InvalidOffer(f"the offer was refused: {exc or type(exc).__name__}") from None
        await self._pc.setLocalDescription(answer)
        return self._pc.localDescription.sdp

    def add_track(self, track: MediaStreamTrack) -> None:
        """Start draining an incoming track into the chunker."""
        if track.kind not in MEDIA_KINDS:
            raise ValueError(f"a track is audio or video, not {track.kind!r}")
        reader = asyncio.create_task(self._read(track), name=f"webrtc-{track.kind}")
        self._readers.add(reader)
        reader.add_done_callback(self._reader_done)

    @property
    def backlog(self) -> int:
        """Chunks waiting for the consumer."""
        return len(self._pending)

    @property
    def chunks_dropped(self) -> int:
        """Chunks cut but dropped unread: the consumer fell `max_pending_chunks` behind."""
        return self.stats.chunks_dropped

    @property
    def ended(self) -> bool:
        """The media is over (what is still pending can be read)."""
        return self._ended

    async def chunks(self) -> AsyncIterator[AVChunk]:
        """The stream's chunks until it ends; leaving the iteration closes the connection and
        flushes the chunker, whose last chunks a later `chunks()` yields."""
        try:
            while True:
                while self._pending:
                    yield self._pending.popleft()
                if self._failure is not None:
                    raise self._failure
                if self._ended:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the readers, flush the chunker and close the peer connection (idempotent)."""
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._end()  # no reader pushes any more: what the chunker holds is the stream's last media
        try:
            # shielded: aiortc may be closing it already (the peer hung up), and a cancelled wait
            # on its close would break that close
            await asyncio.shield(self._pc.close())
        except Exception:  # a connection aiortc set up halfway may fail to close; it is dropped anyway
            log.warning("closing the peer connection failed", exc_info=True)

    # -- ingest ------------------------------------------------------------------------------

    async def _read(self, track: MediaStreamTrack) -> None:
        pin: float | None = None  # receiver time minus media time, fixed at the first frame
        push = self._push_video if track.kind == "video" else self._push_audio
        with contextlib.suppress(MediaStreamError):  # the track ended
            while True:
                frame = await track.recv()
                arrived = self._clock()
                if self._ended:  # the chunker was flushed
                    return
                if frame.time is None:  # no media clock: arrival is all there is
                    at = arrived
                else:
                    if pin is None:
                        pin = arrived - frame.time
                    at = pin + frame.time
                push(frame, at)

    def _push_video(self, frame: av.VideoFrame, at: float) -> None:
        self.stats.video_frames_received += 1
        self._chunker.push_video(frame, at)
        self._collect(self._chunker.pop_ready())

    def _push_audio(self, frame: av.AudioFrame, at: float) -> None:
        self.stats.audio_frames_received += 1
        self._chunker.push_audio(frame, at)
        self._collect(self._chunker.pop_ready())

    def _collect(self, chunks: list[AVChunk]) -> None:
        for chunk in chunks:
            self.stats.chunks_emitted += 1
            # the chunker hands one array per converted frame, repeated for every instant it fills
            self.stats.video_frames_converted += len({id(picture) for picture in chunk.frames})
            if len(self._pending) >= self._max_pending:
                dropped = self._pending.popleft()
                self.stats.chunks_dropped += 1
                self._warnings.warning(
                    "consumer behind", "webrtc consumer behind: dropped chunk %d", dropped.index
                )
            self._pending.append(chunk)
        if chunks:
            self._wakeup.set()

    # -- end ---------------------------------------------------------------------------------

    def _reader_done(self, reader: asyncio.Task[None]) -> None:
        self._readers.discard(reader)
        error = None if reader.cancelled() else reader.exception()
        if isinstance(error, Exception) and self._failure is None:
            self._failure = error  # chunks() raises it
            self._wakeup.set()
        if not self._readers:
            self._end()

    def _connection_changed(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self._end()

    def _end(self) -> None:
        """The media is over: flush what the chunker holds and let the consumer finish."""
        if self._ended:
            return
        self._ended = True
        self._collect(self._chunker.flush())
        self._wakeup.set()
        log.info("webrtc stream ended: %s", self.stats)
