"""Generated clips replayed through PyAV: `iter_chunks`, `FileSource` and `probe`."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

import streamguard.ingest.files as files
from streamguard.config import ChunkSettings
from streamguard.ingest import MediaError
from streamguard.ingest.chunker import AVChunk
from streamguard.ingest.files import FileSource, MediaInfo, iter_chunks, probe
from streamguard.ingest.synthetic import TONE_PITCHES_HZ, generate_frames, write_wav, write_y4m

SETTINGS = ChunkSettings()
RATE = SETTINGS.sample_rate

Clip = Callable[..., Path]


def pitch(audio: np.ndarray) -> float:
    """The strongest frequency in a chunk's audio, in Hz."""
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.argmax(spectrum)) * RATE / audio.shape[0]


async def collect(source: FileSource) -> list[AVChunk]:
    return [chunk async for chunk in source.chunks()]


# -- chunk counts, frames, audio ------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "count"), [(0.5, 0), (4, 2), (5, 3), (7, 4)])
async def test_a_clip_becomes_its_chunks_in_both_apis(clip: Clip, seconds: float, count: int) -> None:
    path = clip("tone.mp4", seconds, motion="moving")
    chunks = list(iter_chunks(path, SETTINGS))
    assert [c.index for c in chunks] == list(range(count))
    assert [c.start for c in chunks] == [2.0 * i for i in range(count)]
    for chunk in chunks:
        assert len(chunk.frames) == 4 and all(
            f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in chunk.frames
        )
        assert chunk.audio.shape == (32000,) and chunk.audio.dtype == np.float32
        # The tone changes pitch every 2 s: each chunk holds its own stretch of it.
        assert pitch(chunk.audio) == pytest.approx(TONE_PITCHES_HZ[chunk.index], abs=1.0)
    full = chunks[: math.floor(seconds / 2)]
    assert all(not c.audio_missing for c in full)
    if count > len(full):  # the last second is padded to a chunk, its silence flagged
        tail = chunks[-1]
        assert tail.audio_missing and 0.5 <= tail.audio_coverage < 0.55
        assert np.sqrt(np.mean(tail.audio[: RATE // 2] ** 2)) > 0.1 and not tail.audio[-RATE // 4 :].any()
    streamed = await collect(FileSource(path, SETTINGS))
    assert len(streamed) == count
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(chunks, streamed, strict=True))


def test_frames_are_the_ones_on_screen_at_each_half_second(clip: Clip) -> None:
    path = clip("moving.mp4", 4, motion="moving")
    generated = list(generate_frames(4, motion="moving"))
    for chunk in iter_chunks(path, SETTINGS):
        for k, frame in enumerate(chunk.frames):
            shown = math.floor((chunk.start + k / SETTINGS.fps) * 15 + 1e-9)  # latest frame at the instant
            nearby = range(max(0, shown - 3), min(len(generated), shown + 4))
            errors = {i: np.abs(frame.astype(int) - generated[i]).mean() for i in nearby}
            assert min(errors, key=errors.get) == shown  # lossy H.264, yet closest to the right frame


def test_a_44k_stereo_mkv_is_resampled(clip: Clip) -> None:
    chunks = list(iter_chunks(clip("stereo.mkv", 4, motion="pan", sample_rate=44100, channels=2), SETTINGS))
    assert len(chunks) == 2 and all(not c.audio_missing for c in chunks)
    assert [pitch(c.audio) for c in chunks] == pytest.approx(list(TONE_PITCHES_HZ[:2]), abs=1.0)


def test_silence_is_audio_but_no_audio_is_flagged(clip: Clip) -> None:
    silent = list(iter_chunks(clip("silent.mp4", 4, audio="silence"), SETTINGS))
    assert len(silent) == 2 and all(not c.audio_missing and np.abs(c.audio).max() < 1e-3 for c in silent)
    mute = list(iter_chunks(clip("mute.mp4", 4, audio="none"), SETTINGS))
    assert len(mute) == 2 and all(c.audio_coverage == 0.0 and not c.audio.any() for c in mute)
    assert all(len(c.frames) == 4 for c in mute)


def test_an_audio_only_file(clip: Clip) -> None:
    chunks = list(iter_chunks(clip("voice.mkv", 4, video=False), SETTINGS))
    assert len(chunks) == 2 and all(
        c.video_missing and c.frames == [] and not c.audio_missing for c in chunks
    )


def test_a_wav_file(tmp_path: Path) -> None:
    chunks = list(iter_chunks(write_wav(tmp_path / "mic.wav", 4, sample_rate=48000), SETTINGS))
    assert len(chunks) == 2 and [pitch(c.audio) for c in chunks] == pytest.approx([330.0, 440.0], abs=1.0)


def test_a_raw_stream_without_timestamps_is_timed_by_its_frame_rate(clip: Clip, tmp_path: Path) -> None:
    raw = tmp_path / "camera.h264"
    with (
        av.open(str(clip("moving.mp4", 4, motion="moving"))) as source,
        av.open(str(raw), "w", format="h264") as out,
    ):
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    assert len(list(iter_chunks(raw, SETTINGS))) == 2  # 60 frames at 15 fps, not at FFmpeg's default 25


# -- synthetic media --------------------------------------------------------------------------------


def test_generated_media_is_deterministic_small_and_as_described(clip: Clip, tmp_path: Path) -> None:
    assert all(
        np.array_equal(a, b)
        for a, b in zip(generate_frames(1, seed=3), generate_frames(1, seed=3), strict=True)
    )
    assert not np.array_equal(next(generate_frames(1, seed=3)), next(generate_frames(1, seed=4)))
    static = list(generate_frames(1, motion="static"))
    assert all(np.array_equal(static[0], f) for f in static)
    for motion in ("moving", "pan"):
        frames = list(generate_frames(1, motion=motion))
        assert not np.array_equal(frames[0], frames[-1])
    assert clip("ten.mp4", 10, motion="moving").stat().st_size < 300_000
    webcam = list(iter_chunks(write_y4m(tmp_path / "webcam.y4m", 2, fps=15), SETTINGS))
    assert len(webcam) == 1 and webcam[0].frames[0].shape == (240, 320, 3) and webcam[0].audio_coverage == 0.0


# -- probe ------------------------------------------------------------------------------------------


def test_probe(clip: Clip) -> None:
    assert probe(clip("tone.mp4", 4, motion="moving")) == MediaInfo(
        duration=4.0, has_audio=True, has_video=True, width=160, height=120, fps=15.0, sample_rate=16000
    )
    voice = probe(clip("voice.mkv", 4, video=False))
    assert voice.has_audio and not voice.has_video and voice.width is None and voice.fps is None
    assert voice.sample_rate == 16000 and voice.duration == pytest.approx(4.0, abs=0.1)


# -- bad files --------------------------------------------------------------------------------------


async def test_a_missing_file_is_file_not_found_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mp4"
    for attempt in (lambda: probe(missing), lambda: list(iter_chunks(missing, SETTINGS))):
        with pytest.raises(FileNotFoundError, match=r"no such media file: .*nowhere\.mp4"):
            attempt()
    with pytest.raises(FileNotFoundError, match=r"nowhere\.mp4"):
        await collect(FileSource(missing, SETTINGS))


async def test_garbage_is_a_media_error_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"garbage\.mp4: cannot be opened as audio/video"):
        probe(garbage)
    with pytest.raises(MediaError, match=r"garbage\.mp4"):
        list(iter_chunks(garbage, SETTINGS))
    with pytest.raises(MediaError, match=r"garbage\.mp4"):
        await collect(FileSource(garbage, SETTINGS))
    assert issubclass(MediaError, ValueError)


def test_a_file_without_audio_or_video_is_a_media_error(tmp_path: Path) -> None:
    subtitles = tmp_path / "only.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(MediaError, match="neither a video nor an audio stream"):
        list(iter_chunks(subtitles, SETTINGS))


@pytest.mark.parametrize(("name", "kept"), [("cut.mp4", 0.55), ("cut.mp4", 0.7), ("cut.mkv", 0.55)])
async def test_a_truncated_file_yields_the_chunks_before_the_damage_then_fails(
    clip: Clip, tmp_path: Path, name: str, kept: float
) -> None:
    # Depending on where the cut falls, decoding fails or the media just ends short of the
    # duration the container declares; either way the file is reported after its chunks.
    whole = clip(name, 7, motion="moving")
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[: round(whole.stat().st_size * kept)])
    chunks = []
    with pytest.raises(MediaError, match=rf"{name}: (decoding failed at|media ends at)"):
        chunks.extend(iter_chunks(cut, SETTINGS))
    assert 1 <= len(chunks) < 4 and [c.index for c in chunks] == list(range(len(chunks)))
    assert all(len(c.frames) == 4 for c in chunks)
    streamed = []
    with pytest.raises(MediaError):
        async for chunk in FileSource(cut, SETTINGS).chunks():
            streamed.append(chunk)
    assert len(streamed) == len(chunks)


class FailingContainer:
    """A real container whose decoding breaks after `frames` frames, as corrupt data would."""

    def __init__(self, container: Any, frames: int):
        self._container, self._frames = container, frames

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def decode(self, *streams: Any) -> Iterator[Any]:
        for i, frame in enumerate(self._container.decode(*streams)):
            if i == self._frames:
                raise av.error.InvalidDataError(errno.EINVAL, "Invalid data found when processing input")
            yield frame


def test_a_decoding_error_halfway_flushes_what_came_before(
    clip: Clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = files._open

    @contextmanager
    def failing_open(path: Path) -> Iterator[Any]:
        with real_open(path) as container:
            yield FailingContainer(container, frames=95)  # about 3.1 s of 15 fps video and 16 kHz AAC

    monkeypatch.setattr(files, "_open", failing_open)
    chunks = []
    with pytest.raises(MediaError, match=r"tone\.mp4: decoding failed at 3\.\d s: Invalid data") as failure:
        chunks.extend(iter_chunks(clip("tone.mp4", 7), SETTINGS))
    assert isinstance(failure.value.__cause__, av.FFmpegError)
    # Chunk 0, and chunk 1 padded from the 1.1 s it got: flushed as at the end of a stream.
    assert [c.index for c in chunks] == [0, 1] and not chunks[0].audio_missing
    assert 0.5 < chunks[1].audio_coverage < 0.6 and len(chunks[1].frames) == 4


# -- FileSource ------------------------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when the code under test sleeps, or the test says so."""

    def __init__(self, now: float = 100.0):
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_realtime_pacing_waits_for_each_chunk_to_be_due(clip: Clip) -> None:
    time = FakeTime()
    source = FileSource(clip("tone.mp4", 7), SETTINGS, realtime=True, clock=time.clock, sleep=time.sleep)
    chunks = await collect(source)
    assert len(chunks) == 4 and time.sleeps == [2.0, 2.0, 2.0, 2.0]  # chunk i yielded at (i + 1) · 2 s
    assert time.now == 108.0


async def test_realtime_pacing_never_waits_when_the_consumer_is_behind(clip: Clip) -> None:
    time = FakeTime()
    source = FileSource(clip("tone.mp4", 7), SETTINGS, realtime=True, clock=time.clock, sleep=time.sleep)
    async for _ in source.chunks():
        time.now += 3.0  # each chunk takes the consumer 3 s: the source is never early again
    assert time.sleeps == [2.0]


async def test_without_realtime_nothing_sleeps(clip: Clip) -> None:
    time = FakeTime()
    assert (
        len(await collect(FileSource(clip("tone.mp4", 4), SETTINGS, clock=time.clock, sleep=time.sleep))) == 2
    )
    assert time.sleeps == []


async def test_decoding_runs_off_the_event_loop_thread(clip: Clip, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = []
    decode = files.iter_chunks

    def recording(path: Path, settings: ChunkSettings):
        for chunk in decode(path, settings):
            threads.append(threading.get_ident())
            yield chunk

    monkeypatch.setattr(files, "iter_chunks", recording)
    assert len(await collect(FileSource(clip("tone.mp4", 4), SETTINGS))) == 2
    assert threads and threading.get_ident() not in threads


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to list open files")
async def test_a_consumer_that_stops_early_closes_the_file(clip: Clip, tmp_path: Path) -> None:
    path = shutil.copy(clip("tone.mp4", 7), tmp_path / "early.mp4")

    def open_now() -> bool:
        return any(os.path.realpath(f"/proc/self/fd/{fd}") == str(path) for fd in os.listdir("/proc/self/fd"))

    stream = FileSource(path, SETTINGS).chunks()
    first = await anext(stream)
    assert first.index == 0 and open_now()
    await stream.aclose()
    assert not open_now()


async def test_cancelling_mid_decode_closes_the_decoder_after_it_returns(
    clip: Clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    closed = []
    first = next(iter_chunks(clip("tone.mp4", 4), SETTINGS))

    def slow_decoder(path: Path, settings: ChunkSettings) -> Iterator[AVChunk]:
        try:
            yield first
            entered.set()
            release.wait()  # decoding the second chunk, on the worker thread
            yield first
        finally:
            closed.append(threading.get_ident())

    monkeypatch.setattr(files, "iter_chunks", slow_decoder)
    stream = FileSource(clip("tone.mp4", 4), SETTINGS).chunks()
    assert (await anext(stream)).index == 0
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.to_thread(entered.wait)
    pending.cancel()
    await asyncio.sleep(0)  # the generator is told while the decode is still running
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert len(closed) == 1 and closed[0] != threading.get_ident()
