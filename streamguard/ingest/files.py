"""Local audio-video files through PyAV, as a chunk source."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import av

from streamguard.config import ChunkSettings
from streamguard.ingest import MediaError
from streamguard.ingest.chunker import AVChunk, Chunker


@dataclass
class MediaInfo:
    duration: float | None
    has_video: bool
    has_audio: bool
    width: int | None
    height: int | None
    fps: float | None
    sample_rate: int | None


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such media file: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: not a readable audio/video file ({exc})") from exc
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise MediaError(f"{path}: holds neither a video nor an audio stream")
    return container


def probe(path: str | Path) -> MediaInfo:
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        return MediaInfo(
            duration=container.duration / av.time_base if container.duration else None,
            has_video=video is not None,
            has_audio=audio is not None,
            width=video.codec_context.width if video else None,
            height=video.codec_context.height if video else None,
            fps=float(video.average_rate) if video and video.average_rate else None,
            sample_rate=audio.codec_context.sample_rate if audio else None,
        )


def iter_chunks(path: str | Path, settings: ChunkSettings) -> Iterator[AVChunk]:
    """Decode a file into chunks. A file that breaks halfway yields the chunks before the damage,
    then raises MediaError."""
    chunker = Chunker(settings)
    with _open(path) as container:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        try:
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if frame.pts is None:
                        continue
                    if isinstance(frame, av.VideoFrame):
                        chunker.push_video(frame)
                    else:
                        chunker.push_audio(frame)
                yield from chunker.pop_ready()
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: decoding failed after {chunker._next_chunk} chunk(s) ({exc})") from exc
    yield from chunker.flush()


class FileSource:
    """A file as a live source: chunks as fast as decoding goes, or paced at real time."""

    def __init__(
        self,
        path: str | Path,
        settings: ChunkSettings,
        realtime: bool = False,
        clock=time.monotonic,
        sleep=asyncio.sleep,
    ):
        self.path = Path(path)
        self.settings = settings
        self.realtime = realtime
        self._clock, self._sleep = clock, sleep

    async def chunks(self) -> AsyncIterator[AVChunk]:
        iterator = iter_chunks(self.path, self.settings)
        started = self._clock()
        while True:
            # Pull one chunk at a time on a worker thread: decoding never blocks the event loop
            # and nothing is decoded ahead of the consumer.
            chunk = await asyncio.to_thread(next, iterator, None)
            if chunk is None:
                return
            if self.realtime:
                await self._sleep(max(0.0, started + chunk.start + self.settings.seconds - self._clock()))
            yield chunk
