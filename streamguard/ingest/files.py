"""Local audio-video files, decoded with PyAV, as a chunk source.

The first video stream and the first audio stream are decoded (either may be absent) and cut
by the `Chunker`. Errors are the caller's to show: a missing path is FileNotFoundError; a file
PyAV cannot open, or one without audio and video, is `MediaError`. A file that breaks partway
(truncated, corrupt data) yields every chunk before the damage, as at a normal end of stream,
then raises `MediaError`. A truncated file is noticed when decoding fails, or, for containers
that record their duration up front (MP4/MOV, Matroska/WebM), when the media ends more than a
few frames short of it. A truncated MP4 whose index sits at its end cannot be opened at all.
"""

from __future__ import annotations

import asyncio
import errno
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
from av.container import InputContainer
from av.stream import Stream

from streamguard.config import ChunkSettings
from streamguard.ingest import MediaError
from streamguard.ingest.chunker import AVChunk, Chunker

# A file's demuxer may run one track a few seconds ahead of the other; a chunk waits this many
# chunks for the lagging track before it goes out without it (live sources wait one).
FILE_LATENCY_CHUNKS = 3
# Containers whose header records the duration, so that media ending early means damage; and
# how much shorter than that the media may end (frame and packet rounding) before it counts.
_DURATION_IN_HEADER = {"mov", "mp4", "matroska", "webm"}
TRUNCATION_SLACK_S = 0.5
DEFAULT_FPS = 25.0  # for timing a raw stream that states no frame rate


@dataclass(frozen=True)
class MediaInfo:
    duration: float | None  # seconds, as the container states it
    has_audio: bool
    has_video: bool
    width: int | None
    height: int | None
    fps: float | None
    sample_rate: int | None


def probe(path: str | Path) -> MediaInfo:
    """What the file holds (its first video and first audio stream), without decoding it."""
    with _open(path) as container:
        video, audio = _first_streams(path, container)
        return MediaInfo(
            duration=container.duration / av.time_base if container.duration is not None else None,
            has_audio=audio is not None,
            has_video=video is not None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            fps=_frame_rate(video),
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
        )


def iter_chunks(path: str | Path, settings: ChunkSettings) -> Iterator[AVChunk]:
    """The file's chunks, decoded as fast as they are asked for (blocking)."""
    with _open(path) as container:
        video, audio = _first_streams(path, container)
        streams = [s for s in (video, audio) if s is not None]
        starts = [float(s.start_time * s.time_base) for s in streams if s.start_time is not None]
        chunker = Chunker(
            settings, latency=FILE_LATENCY_CHUNKS * settings.seconds, origin=min(starts, default=None)
        )
        if video is not None:
            video.thread_type = "AUTO"  # frame and slice threads: decoding is what a file source costs
        # A raw elementary stream has no timestamps: its frames are timed by its frame rate.
        period = 1 / (_frame_rate(video) or DEFAULT_FPS)
        video_frames = 0
        try:
            for frame in container.decode(*streams):
                if isinstance(frame, av.VideoFrame):
                    t = frame.time if frame.time is not None else video_frames * period
                    chunker.push_video(frame, t)
                    video_frames += 1
                else:
                    chunker.push_audio(frame)
                yield from chunker.pop_ready()
        except av.FFmpegError as exc:
            yield from chunker.flush()
            raise MediaError(
                f"{path}: decoding failed at {max(chunker.position, 0.0):.1f} s: {exc.strerror}"
            ) from exc
        if chunker.position == -math.inf:
            raise MediaError(f"{path}: not a single audio or video frame could be decoded")
        yield from chunker.flush()
        declared = _declared_duration(container)
        if declared is not None and chunker.position < declared - TRUNCATION_SLACK_S:
            raise MediaError(
                f"{path}: media ends at {chunker.position:.1f} s of the {declared:.1f} s its container "
                "declares; the file is truncated or damaged"
            )


class FileSource:
    """A file as a stream: chunks as fast as decoding goes, or paced at real time.

    Decoding runs on a worker thread one chunk at a time, as the consumer asks, so the event
    loop never blocks and at most one decoded chunk waits in memory. With `realtime`, chunk i
    is not yielded before (i + 1) chunk lengths after iteration began, as a camera delivers
    it; `clock` and `sleep` are injectable so tests need not wait.
    """

    chunks_dropped = 0  # decoded only as the consumer asks: no chunk ever waits, none is dropped

    def __init__(
        self,
        path: str | Path,
        settings: ChunkSettings,
        realtime: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ):
        self.path = Path(path)
        self.settings = settings
        self.realtime = realtime
        self._clock = clock
        self._sleep = sleep

    async def chunks(self) -> AsyncIterator[AVChunk]:
        decoded = iter_chunks(self.path, self.settings)
        # The generator must never run on two threads at once: a consumer that stops while a
        # chunk is being decoded closes it only after that decode returns.
        lock = threading.Lock()

        def advance() -> AVChunk | None:
            with lock:
                return next(decoded, None)

        def close() -> None:
            with lock:
                decoded.close()

        began = self._clock()
        try:
            while (chunk := await asyncio.to_thread(advance)) is not None:
                if self.realtime:
                    delay = began + chunk.start + self.settings.seconds - self._clock()
                    if delay > 0:
                        await self._sleep(delay)
                yield chunk
        finally:
            await asyncio.to_thread(close)


@contextmanager
def _open(path: str | Path) -> Iterator[InputContainer]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such media file", str(path))
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: cannot be opened as audio/video: {exc.strerror}") from exc
    with container:
        yield container


def _first_streams(path: str | Path, container: InputContainer) -> tuple[Stream | None, Stream | None]:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    if video is None and audio is None:
        raise MediaError(f"{path}: holds neither a video nor an audio stream")
    return video, audio


def _frame_rate(video: Stream | None) -> float | None:
    rate = video.guessed_rate or video.average_rate if video is not None else None
    return float(rate) if rate else None


def _declared_duration(container: InputContainer) -> float | None:
    if container.duration is None or not _DURATION_IN_HEADER & set(container.format.name.split(",")):
        return None
    return container.duration / av.time_base
