"""An RTSP camera as a chunk source: PyAV over TCP, reconnecting on its own.

Each connection runs on its own thread (`_Connection`): it opens the camera, demuxes and
decodes, and cuts chunks with the source's one `Chunker`; the event loop only waits to be woken
and hands the chunks on, so no blocking call ever runs on it. Nothing waits forever: sockets
time out, PyAV's per-call deadline interrupts a read the camera never answers, a watchdog ends
a connection that delivers packets but no chunks, and opening is bounded.

When a connection drops (the camera ends the stream, a read fails or times out) the source
reports "reconnecting" with the reason, retries with exponential backoff and jitter, reports
"live" once a connection has delivered a chunk of its own media (not one the timeline filled
in) and counts it in `reconnects`. Only such a connection resets the backoff: a camera that
accepts and drops at once is retried ever more slowly (and given up after `max_attempts`).
The chunk timeline runs on: a new connection's timestamps
restart, so its media is placed after what the last one delivered plus the time the camera was
away; the chunker turns that gap into silent chunks without video (or, beyond its `max_gap`,
skips it), never into repeated or reordered indices.

Chunks wait for the consumer in a queue of `max_pending_chunks`; when it is full the oldest
goes and is counted in `chunks_dropped`. A consumer that stops (a deleted stream) does not wait
for the connection thread: it ends by itself at its next packet, or when PyAV's read deadline
interrupts a camera that sends nothing.

`check()` is the first connection's test, for callers that must refuse a bad URL at once: it
raises `SourceUnreachable` with a clear reason within about `open_timeout_s`, counted from the
moment the open starts on a thread of its own. The connection it opened is the first one
`chunks()` reads when that starts within `read_timeout_s`: a camera is opened once, not twice,
before its first chunk (opening one that sends a frame a second takes that long again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Literal

import av
from av.container import InputContainer

from streamguard.config import ChunkSettings
from streamguard.ingest import MediaError, on_own_thread
from streamguard.ingest.chunker import AVChunk, Chunker
from streamguard.ingest.repeated import RepeatedWarnings
from streamguard.ingest.urls import shown_url

log = logging.getLogger(__name__)

SourceState = Literal["live", "reconnecting"]
StateListener = Callable[[SourceState, "str | None"], None]

# Codec parameters of an RTSP camera come with its SDP: a tenth of a second of probing is
# plenty, where FFmpeg's default probes for seconds before the stream opens, and the frame rate
# (which the chunker does not use: it goes by timestamps) is not probed at all, which would
# wait for several frames of a slow camera.
ANALYZE_DURATION_US = 100_000
# FFmpeg's RTSP reader waits out its timeout twice (it retries once) before a silent camera
# fails a read; each wait gets half of `read_timeout_s`.
READ_WAITS = 2
CHECK_SLACK_S = 1.0  # `check` abandons an open that has not returned by its timeout plus this
DEFAULT_MAX_PENDING_CHUNKS = 8  # cut chunks the consumer has not taken yet; beyond that the oldest goes


class SourceUnreachable(MediaError):
    """The camera cannot be opened (refused, no such path, no answer, not RTSP), or could not be
    reopened within `max_attempts`."""


class RtspSource:
    """A live RTSP camera whose `chunks()` survive drops; see the module docstring.

    `backoff` is (first delay, largest delay) in seconds between attempts; `max_attempts`
    bounds consecutive failed attempts (connections that delivered no chunk) before `chunks()`
    gives up with `SourceUnreachable` (None: never). `on_state` hears every change of connection
    state on the event loop.
    """

    def __init__(
        self,
        url: str,
        settings: ChunkSettings,
        *,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        backoff: tuple[float, float] = (0.5, 10.0),
        max_attempts: int | None = None,
        max_pending_chunks: int = DEFAULT_MAX_PENDING_CHUNKS,
        on_state: StateListener | None = None,
    ):
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first, largest) with 0 < first <= largest, got {backoff}")
        if max_pending_chunks < 1:
            raise ValueError("max_pending_chunks must be at least 1")
        self.url = url
        self.name = shown_url(url)  # for messages and logs: no credentials
        self.settings = settings
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.max_pending_chunks = max_pending_chunks
        self.on_state = on_state
        self.reconnects = 0  # times the camera came back after a drop
        self.chunks_dropped = 0  # cut but dropped unread: the consumer fell `max_pending_chunks` behind
        self.state: SourceState | None = None
        self.warnings = RepeatedWarnings(log)
        self._checked: tuple[InputContainer, float] | None = None  # `check`'s connection, opened when

    async def check(self) -> None:
        """Open the camera, keeping the connection for `chunks()`; `SourceUnreachable` says why it
        cannot be opened."""

        def probe() -> None:
            self._checked = (self._open(), time.monotonic())

        try:
            await asyncio.wait_for(
                on_own_thread(probe, f"rtsp check {self.name}"), self.open_timeout_s + CHECK_SLACK_S
            )
        except TimeoutError:  # a call FFmpeg cannot interrupt (a name lookup) is left behind
            raise SourceUnreachable(
                f"cannot open the RTSP stream {self.name}: no answer within {self.open_timeout_s:g} s"
            ) from None

    async def chunks(self) -> AsyncIterator[AVChunk]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notify() -> None:  # from a connection thread
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(wake.set)

        chunker = Chunker(self.settings, origin=0.0, wall_clock=time.monotonic)
        failures = 0  # consecutive attempts that delivered no chunk
        resume_at = 0.0  # stream seconds where the next connection's media starts
        lost_at: float | None = None  # time.monotonic() when the last connection dropped
        while True:
            connection = _Connection(self, chunker, resume_at, lost_at, notify)
            connection.start()
            delivered = False  # a chunk of this connection's own media
            try:
                while True:
                    finished = connection.done  # read first: what it cut before ending is taken below
                    while (chunk := connection.take()) is not None:
                        media_from = connection.media_from
                        if media_from is not None and chunk.start + self.settings.seconds > media_from:
                            delivered = True
                            self._report_live()
                        yield chunk
                    if finished:
                        break
                    await wake.wait()
                    wake.clear()
            finally:
                # Not joined, so a consumer that stops never waits on a camera that sends
                # nothing: the thread ends by itself after its current read, and the chunker is
                # the next connection's only once this one is done.
                connection.stop()
            if isinstance(connection.error, Exception):
                raise connection.error  # a bug, not the camera: reconnecting would hide it
            if connection.opened:
                lost_at = connection.ended_at
                resume_at = max(chunker.position, 0.0)  # -inf before any media
            failures = 0 if delivered else failures + 1
            reason = connection.error or "the camera ended the stream"
            if self.max_attempts is not None and failures >= self.max_attempts:
                raise SourceUnreachable(f"gave up after {failures} failed attempts: {reason}")
            self._report("reconnecting", reason)
            delay = self._delay(failures)
            log.debug(
                "rtsp.retry url=%s failures=%d delay_s=%.2f reason=%r", self.name, failures, delay, reason
            )
            await asyncio.sleep(delay)

    def _report_live(self) -> None:
        if self.state == "reconnecting":
            self.reconnects += 1
        self._report("live", None)

    def _report(self, state: SourceState, reason: str | None) -> None:
        if state == self.state:
            return
        self.state = state
        log.info("rtsp.%s url=%s%s", state, self.name, f" reason={reason!r}" if reason else "")
        if self.on_state is not None:
            self.on_state(state, reason)

    def _delay(self, failures: int) -> float:
        """Exponential backoff with jitter, so cameras dropped together do not retry in step."""
        first, largest = self.backoff
        delay = min(largest, first * 2.0**failures)
        return delay * random.uniform(0.5, 1.0)

    def _connection(self) -> InputContainer:
        """The connection `check` opened if it is still fresh (its camera has not given up on a
        client that reads nothing), else a new one. Blocking."""
        checked, self._checked = self._checked, None
        if checked is not None:
            container, opened_at = checked
            if time.monotonic() - opened_at < self.read_timeout_s:
                return container
            container.close()
        return self._open()

    def _open(self) -> InputContainer:
        """One connection; `SourceUnreachable` when it cannot be made. Blocking."""
        wait_s = self.read_timeout_s / READ_WAITS
        options = {
            "rtsp_transport": "tcp",
            "timeout": str(round(wait_s * 1e6)),  # socket I/O, in microseconds
            "analyzeduration": str(ANALYZE_DURATION_US),
            "fpsprobesize": "0",
        }
        began = time.monotonic()
        try:
            container = av.open(self.url, options=options, timeout=(self.open_timeout_s, wait_s))
        except av.FFmpegError as exc:
            if time.monotonic() - began >= min(self.open_timeout_s, wait_s):
                reason = "no answer in time"
            elif isinstance(exc, av.error.InvalidDataError):  # it answered, but not in RTSP
                reason = f"not an RTSP server ({exc.strerror})"
            else:
                reason = _reason(exc)
            raise SourceUnreachable(f"cannot open the RTSP stream {self.name}: {reason}") from None
        if not container.streams.video and not container.streams.audio:
            container.close()
            raise SourceUnreachable(f"the RTSP stream {self.name} has neither video nor audio")
        return container


class _Connection(threading.Thread):
    """One RTSP session: open, demux, decode and cut chunks until it drops or is stopped.

    The event loop reads `opened`, `done` and `error` and calls `take()` after `notify` wakes
    it; the chunker is this thread's alone until it has ended.
    """

    def __init__(
        self,
        source: RtspSource,
        chunker: Chunker,
        resume_at: float,
        lost_at: float | None,
        notify: Callable[[], None],
    ):
        super().__init__(name=f"rtsp {source.name}", daemon=True)
        self.source = source
        self.chunker = chunker
        self.resume_at = resume_at
        self.lost_at = lost_at
        self.notify = notify
        self.opened = False
        # Stream seconds where the chunker put this connection's first frame: chunks reaching
        # past it hold its own media, earlier ones the last connection's media or filler.
        self.media_from: float | None = None
        # This thread appends and the loop takes, both under the lock: a drop is counted exactly.
        self._pending: deque[AVChunk] = deque()
        self._lock = threading.Lock()
        self.done = False
        self.ended_at: float | None = None  # time.monotonic() when it ended
        self.error: str | Exception | None = None  # why it ended: the camera's fault, or a bug
        self._stopped = threading.Event()
        # No chunk for this long while packets still come in: the camera's clock is stuck.
        self.stall_s = source.read_timeout_s + 2 * source.settings.seconds

    def stop(self) -> None:
        self._stopped.set()

    def take(self) -> AVChunk | None:
        """The oldest chunk cut and not taken yet (called from the loop)."""
        with self._lock:
            return self._pending.popleft() if self._pending else None

    def _hand_over(self, ready: list[AVChunk]) -> None:
        """Queue cut chunks for the loop; beyond `max_pending_chunks` the oldest go, counted."""
        with self._lock:
            self._pending.extend(ready)
            dropped = max(0, len(self._pending) - self.source.max_pending_chunks)
            for _ in range(dropped):
                self._pending.popleft()
            self.source.chunks_dropped += dropped
        if dropped:
            self.source.warnings.warning(
                "consumer behind", "rtsp.consumer_behind url=%s dropped_chunks=%d", self.source.name, dropped
            )
        self.notify()

    def run(self) -> None:
        try:
            with self.source._connection() as container:
                self.opened = True
                self.notify()
                self._read(container)
        except SourceUnreachable as exc:
            self.error = str(exc)
        except av.FFmpegError as exc:
            self.error = f"reading failed: {_reason(exc)}"
        except _Stalled as exc:
            self.error = str(exc)
        except Exception as exc:
            log.exception("rtsp.bug url=%s", self.source.name)
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.done = True
            self.notify()

    def _read(self, container: InputContainer) -> None:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        self.chunker.drop_picture()  # what an earlier connection showed is off the screen
        # The SDP says which tracks the camera sends: chunks must not wait for one it lacks.
        self.chunker.expect_tracks(video=bool(container.streams.video), audio=bool(container.streams.audio))
        shift: float | None = None  # this connection's timestamps + shift = stream seconds
        progress = time.monotonic()
        undecodable: list[str] = []  # why packets failed to decode, while none has decoded
        for packet in container.demux(*streams):
            if self._stopped.is_set():
                return
            try:
                frames = packet.decode()
            except av.InvalidDataError as exc:  # a damaged packet costs its frames, not the connection
                frames = []
                if self.media_from is None:
                    undecodable.append(f"{packet.stream.type}: {_reason(exc)}")
            for frame in frames:
                if frame.time is None:  # a frame decoded before the stream's first timestamp
                    continue
                if shift is None:
                    shift = self._resume_time() - frame.time
                push = (
                    self.chunker.push_video if isinstance(frame, av.VideoFrame) else self.chunker.push_audio
                )
                placed = push(frame, frame.time + shift)
                if self.media_from is None:  # where the chunker put it: after a long outage it
                    self.media_from = placed  # skips the gap, placing it right after the old media
            ready = self.chunker.pop_ready()
            now = time.monotonic()
            if ready:
                self._hand_over(ready)
                progress = now
            elif now - progress > self.stall_s and self.media_from is None and undecodable:
                raise _Stalled(
                    f"the camera's media cannot be decoded: {len(undecodable)} packets failed "
                    f"({undecodable[-1]}) and none decoded in {self.stall_s:g} s"
                )
            elif now - progress > self.stall_s:
                raise _Stalled(f"packets arrive but no chunk was completed for {self.stall_s:g} s")

    def _resume_time(self) -> float:
        """Where this connection's first frame goes: after the last one's media, plus the time
        the camera was away."""
        away = 0.0 if self.lost_at is None else time.monotonic() - self.lost_at
        return self.resume_at + away


class _Stalled(Exception):
    pass


def _reason(exc: av.FFmpegError) -> str:
    if isinstance(exc, av.error.ExitError | av.error.TimeoutError):
        return "no data in time"
    return exc.strerror or type(exc).__name__
