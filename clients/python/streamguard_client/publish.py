"""`streamguard-publish SOURCE`: send a camera, a microphone, a file or an RTSP feed to a
StreamGuard service as a WebRTC stream, from a machine without a browser (the `[publish]` extra).

The signalling is the service's one round trip (`POST /v1/streams/webrtc`, the offer sent once
ICE gathering is complete). The publisher prints the stream id, then a line of the stream's
stats every `--interval` seconds over its websocket. When the stream goes away (the service
restarts, the network drops, the peer connection fails, the stream is deleted), it publishes
again as a new stream, with backoff. A file that is not looped ends the stream, and the publisher
with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

try:
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer
    from aiortc.mediastreams import MediaStreamError
except ImportError as exc:  # the client installed without its [publish] extra
    raise ImportError(
        f"streamguard-publish needs aiortc and av ({exc}): pip install 'streamguard-client[publish]'"
    ) from exc

from streamguard_client.backoff import Backoff
from streamguard_client.client import TOKEN_ENV, URL_ENV, StreamGuard
from streamguard_client.errors import (
    ConnectionLostError,
    ServiceError,
    ServiceFullError,
    StreamEndedError,
    UnknownStreamError,
    UnreachableError,
)


class MediaUnavailable(Exception):
    """The source could not be opened (no such device, an unreadable file, a camera that is down)."""


# Refusals after which publishing again could succeed: the stream went away, the worker was full.
_TRANSIENT = (UnreachableError, ConnectionLostError, StreamEndedError, UnknownStreamError, ServiceFullError)


@dataclass(frozen=True)
class Source:
    """What to publish: a media URL or path for FFmpeg (with its input `format` and `options`),
    and optionally a microphone played alongside it."""

    media: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    loop: bool = False
    audio: str | None = None
    audio_format: str = "alsa"

    @classmethod
    def parse(
        cls,
        media: str,
        *,
        format: str | None = None,
        loop: bool = False,
        audio: str | None = None,
        audio_format: str = "alsa",
        video_size: str | None = None,
    ) -> Source:
        """A V4L2 camera (`/dev/video*`), an RTSP URL (read over TCP), or a file; `format` names
        FFmpeg's input format for anything else (`alsa` for a microphone alone, `avfoundation`...)."""
        scheme = urlsplit(media).scheme.lower()
        options: dict[str, str] = {}
        if media.startswith("/dev/video"):
            format = format or "v4l2"
        if format == "v4l2" and video_size:
            options["video_size"] = video_size
        if scheme in ("rtsp", "rtsps"):
            options["rtsp_transport"] = "tcp"
        elif format is None and not scheme and not os.path.exists(media):
            raise ValueError(f"no such file: {media}")
        if loop and (format is not None or scheme):
            raise ValueError("--loop repeats a file; a camera or a URL plays on by itself")
        return cls(media, format, options, loop, audio, audio_format)

    @property
    def live(self) -> bool:
        """A device or a URL: one that fails to open may work again later; a file will not."""
        return self.format is not None or bool(urlsplit(self.media).scheme)

    def open(self) -> list[MediaStreamTrack]:
        """Fresh tracks (a new peer connection needs its own): at most one audio, one video."""
        tracks = self._play(self.media, self.format, self.options)
        if self.audio is not None:
            microphone = self._play(self.audio, self.audio_format, {})
            if "audio" not in microphone:
                raise MediaUnavailable(f"{self.audio} has no audio")
            tracks["audio"] = microphone["audio"]
        if not tracks:
            raise MediaUnavailable(f"{self.media} has neither audio nor video")
        if self.loop:  # each kind from a player of its own, reopened at the end of the file
            return [Relooped(track, self._reopen(kind)) for kind, track in tracks.items()]
        return list(tracks.values())

    def _reopen(self, kind: str) -> Callable[[], MediaStreamTrack]:
        return lambda: self._play(self.media, self.format, self.options)[kind]

    @staticmethod
    def _play(media: str, format: str | None, options: dict[str, str]) -> dict[str, MediaStreamTrack]:
        try:
            player = MediaPlayer(media, format=format, options=options or None)
        except Exception as exc:  # PyAV's errors for a missing device, a bad file, a refused URL
            raise MediaUnavailable(f"cannot open {media}: {exc}") from exc
        return {track.kind: track for track in (player.video, player.audio) if track is not None}


class Relooped(MediaStreamTrack):
    """A file's track played over and over, on one timeline that runs on across the loops.

    aiortc's own `loop=True` does not loop with PyAV ≥ 14 (the end of a file is an EOFError it
    does not expect), and would restart the timestamps at zero; so at the end of the file this
    track opens it again and shifts the new player's timestamps to follow the last frame."""

    def __init__(self, track: MediaStreamTrack, reopen: Callable[[], MediaStreamTrack]):
        super().__init__()
        self.kind = track.kind
        self._track, self._reopen = track, reopen
        self._offset = Fraction(0)  # seconds added to this loop's timestamps
        self._last = Fraction(0)  # the latest frame's time on the running timeline
        self._step = Fraction(1, 50)  # the latest gap between frames

    async def recv(self) -> Any:
        while True:
            try:
                frame = await self._track.recv()
                break
            except MediaStreamError:
                if self.readyState != "live":
                    raise
                self._track.stop()
                self._track = self._reopen()
                self._offset = self._last + self._step
        at = Fraction(frame.pts) * frame.time_base + self._offset
        if at > self._last:
            self._step = at - self._last
        self._last = at
        frame.pts = round(at / frame.time_base)
        return frame

    def stop(self) -> None:
        super().stop()
        self._track.stop()


class Publisher:
    """Publishes `source` to the service, again and again while the service drops it."""

    def __init__(
        self, client: StreamGuard, source: Source, interval_s: float, say: Callable[[str], None] = print
    ):
        self.client, self.source, self.interval_s, self.say = client, source, interval_s, say

    async def run(self, backoff: Backoff) -> int:
        """Publish until the media ends (0), the service refuses for good or the retries run out (1)."""
        delays = backoff.delays()
        while True:
            try:
                outcome, opened = await self._publish_once()
            except _TRANSIENT as exc:
                outcome, opened = str(exc), False
            except ServiceError as exc:
                self.say(f"error ({exc.code}): {exc.message}")
                return 1
            except MediaUnavailable as exc:
                if not self.source.live:
                    self.say(f"error: {exc}")
                    return 2
                outcome, opened = str(exc), False
            if outcome is None:
                self.say(f"{self.source.media} ended")
                return 0
            if opened:  # it ran: the next outage starts its backoff afresh
                delays = backoff.delays()
            delay = next(delays, None)
            if delay is None:
                self.say(f"{outcome}; giving up")
                return 1
            self.say(f"{outcome}; publishing again in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _publish_once(self) -> tuple[str | None, bool]:
        """One stream: (why it ended, None when the media did; whether the service opened it)."""
        tracks = self.source.open()
        media_ended = asyncio.Event()
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        connection_lost = asyncio.Event()

        @peer.on("connectionstatechange")
        def _state() -> None:
            if peer.connectionState in ("failed", "closed"):
                connection_lost.set()

        for track in tracks:
            track.on("ended", media_ended.set)
            peer.addTrack(track)
        try:
            await peer.setLocalDescription(await peer.createOffer())  # gathers every candidate
            answer = await self.client.open_webrtc(peer.localDescription.sdp)
            await peer.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            stream_id = answer["stream_id"]
            self.say(f"stream {stream_id} {answer['stream']['source']} on {self.client.url}")
            watch = asyncio.create_task(self._print_stats(stream_id))
            ends = {
                asyncio.create_task(media_ended.wait()): None,
                asyncio.create_task(connection_lost.wait()): "the peer connection was lost",
                watch: "the stream went away",
            }
            try:
                done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in ends:
                    task.cancel()
            first = done.pop()
            if first is watch and not watch.cancelled() and watch.exception() is not None:
                return f"the stream went away ({watch.exception()})", True
            return ends[first], True
        finally:
            await peer.close()
            for track in tracks:
                track.stop()

    async def _print_stats(self, stream_id: str) -> None:
        async with self.client.connect(stream_id, reconnect=False) as socket:
            async for stream in socket.stats(self.interval_s):
                self.say(describe(stream))
                if stream["state"] in ("ended", "error"):
                    return


def describe(stream: dict[str, Any]) -> str:
    """One line of a stream's state and stats."""
    stats = stream["stats"]
    rtf = stats["real_time_factor"]
    return (
        f"{stream['id']} {stream['state']}: chunks {stats['chunks_processed']}/{stats['chunks_received']}"
        f" (redundant {stats['chunks_dropped_redundant']}, shed {stats['chunks_shed']}),"
        f" pruned {100 * stats['compression']:.0f}%, RTF {'-' if rtf is None else f'{rtf:.2f}'},"
        f" queue {stats['queue_depth']}, KV {stats['kv_tokens']} tokens"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamguard-publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="/dev/videoN, a file, an rtsp:// URL, or a device with --format")
    parser.add_argument("--url", help=f"the service (default: ${URL_ENV}, else http://127.0.0.1:8000)")
    parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--format", help="FFmpeg input format of SOURCE (v4l2 for /dev/video*; alsa, ...)")
    parser.add_argument("--video-size", help="camera resolution, e.g. 640x480 (v4l2)")
    parser.add_argument("--audio", help="a microphone to send as well, e.g. hw:0 or default")
    parser.add_argument("--audio-format", default="alsa", help="FFmpeg input format of --audio (alsa, pulse)")
    parser.add_argument("--loop", action="store_true", help="repeat a file without end")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between stats lines (default 2)")
    parser.add_argument(
        "--retries", type=int, help="give up after this many failed tries in a row (default: never)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        source = Source.parse(
            args.source,
            format=args.format,
            loop=args.loop,
            audio=args.audio,
            audio_format=args.audio_format,
            video_size=args.video_size,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(line, flush=True)

    async def publish() -> int:
        async with StreamGuard(args.url, args.token) as client:
            publisher = Publisher(client, source, args.interval, say)
            return await publisher.run(Backoff(attempts=args.retries, max_s=30.0))

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(publish())
    return 0  # Ctrl-C: the peer connection was closed on the way out; the stream ends


if __name__ == "__main__":
    sys.exit(main())
