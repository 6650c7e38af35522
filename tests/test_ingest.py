"""The chunker on synthetic timestamp streams, and files decoded through PyAV."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamguard.config import ChunkSettings
from streamguard.ingest import MediaError
from streamguard.ingest.chunker import Chunker
from streamguard.ingest.files import FileSource, iter_chunks, probe
from streamguard.ingest.synthetic import write_clip

SETTINGS = ChunkSettings()


def frame_at(t: float) -> np.ndarray:
    """A frame whose pixels encode its timestamp in centiseconds."""
    return np.full((4, 4, 3), 0, np.uint8) + np.array([int(t * 100) // 256, int(t * 100) % 256, 0], np.uint8)


def stamp(frame: np.ndarray) -> float:
    return (int(frame[0, 0, 0]) * 256 + int(frame[0, 0, 1])) / 100


def feed(chunker, seconds, fps=30.0, audio_start=0.0, audio=True, video=True, jitter=0.0, rate=48000):
    rng = np.random.default_rng(0)
    events = []
    if video:
        events += [(i / fps + rng.uniform(0, jitter), "v") for i in range(int(seconds * fps))]
    if audio:
        block = 960
        events += [
            (audio_start + k * block / rate, "a") for k in range(int((seconds - audio_start) * rate / block))
        ]
    chunks = []
    for t, kind in sorted(events):
        if kind == "v":
            chunker.push_video(frame_at(t), t)
        else:
            ramp = np.full((2, 960), 0.25, np.float32)  # stereo, constant level
            chunker.push_audio(ramp, t, sample_rate=rate)
        chunks += chunker.pop_ready()
    return chunks + chunker.flush()


@pytest.mark.parametrize("fps", [30.0, 25.0, 7.5])
def test_video_is_sampled_at_2_fps_by_presentation_time(fps):
    chunks = feed(Chunker(SETTINGS), 6.0, fps=fps)
    assert [c.index for c in chunks] == [0, 1, 2]
    for chunk in chunks:
        assert len(chunk.frames) == 4 and chunk.audio.shape == (32000,)
        for k, frame in enumerate(chunk.frames):
            instant = chunk.start + k * 0.5
            assert instant - 1 / fps - 0.011 <= stamp(frame) <= instant + 1e-6  # shown then (cs stamps)
        # ffmpeg's stereo-to-mono downmix: (L + R) / sqrt(2)
        assert np.allclose(chunk.audio, 0.25 * np.sqrt(2), atol=1e-3) and not chunk.audio_missing


def test_late_audio_is_padded_with_silence_and_flagged():
    chunks = feed(Chunker(SETTINGS), 4.0, audio_start=0.7)
    first = chunks[0]
    assert first.audio_missing and 0.6 < first.audio_coverage < 0.7
    assert np.all(first.audio[: int(0.69 * 16000)] == 0) and np.allclose(
        first.audio[int(0.72 * 16000) :], 0.25 * np.sqrt(2), atol=1e-3
    )
    assert not chunks[1].audio_missing


def test_streams_without_audio_or_without_video_still_flow():
    no_audio = feed(Chunker(SETTINGS), 4.0, audio=False)
    assert len(no_audio) == 2 and all(c.audio_missing and c.audio_coverage == 0 for c in no_audio)
    no_video = feed(Chunker(SETTINGS), 4.0, video=False)
    assert len(no_video) == 2 and all(c.video_missing for c in no_video)


def test_jitter_keeps_chunks_whole_and_ordered():
    chunks = feed(Chunker(SETTINGS), 6.0, jitter=0.02)
    assert [c.start for c in chunks] == [0.0, 2.0, 4.0]
    assert all(len(c.frames) == 4 for c in chunks)


def test_timestamp_jumps_and_wraps_rebase_instead_of_breaking_order():
    chunker = Chunker(SETTINGS)
    out = []
    times = [i / 10 for i in range(30)] + [3600 + i / 10 for i in range(30)] + [5 + i / 10 for i in range(30)]
    for t in times:
        chunker.push_video(frame_at(t % 600), t)
        out += chunker.pop_ready()
    out += chunker.flush()
    assert [c.index for c in out] == list(range(len(out)))
    assert 4 <= len(out) <= 5  # 9 s of media, not an hour of empty chunks


def test_a_frame_without_a_timestamp_needs_one():
    with pytest.raises(ValueError, match="timestamp"):
        Chunker(SETTINGS).push_video(np.zeros((8, 8, 3), np.uint8))


def test_file_chunks_count_shape_and_tone(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", 5, motion="moving")
    info = probe(path)
    assert info.has_video and info.has_audio and info.width == 160
    chunks = list(iter_chunks(path, SETTINGS))
    assert [c.index for c in chunks] == [0, 1, 2]  # the last 1 s is padded to a chunk
    assert all(len(c.frames) == 4 and c.frames[0].shape == (120, 160, 3) for c in chunks)
    assert all(np.abs(c.audio).max() > 0.2 for c in chunks)
    short = list(iter_chunks(write_clip(tmp_path / "short.mp4", 0.5), SETTINGS))
    assert short == []


def test_video_only_and_audio_only_files(tmp_path):
    video_only = list(iter_chunks(write_clip(tmp_path / "v.mp4", 4, audio="none"), SETTINGS))
    assert len(video_only) == 2 and all(c.audio_missing for c in video_only)
    audio_only = list(iter_chunks(write_clip(tmp_path / "a.mkv", 4, video=False), SETTINGS))
    assert len(audio_only) == 2 and all(c.video_missing and not c.audio_missing for c in audio_only)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such media file"):
        list(iter_chunks(tmp_path / "missing.mp4", SETTINGS))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"garbage\.mp4"):
        list(iter_chunks(garbage, SETTINGS))


async def test_file_source_paces_real_time_with_an_injected_clock(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", 4)
    now = [100.0]
    waits = []

    async def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    source = FileSource(path, SETTINGS, realtime=True, clock=lambda: now[0], sleep=sleep)
    chunks = [c async for c in source.chunks()]
    assert len(chunks) == 2 and waits == [2.0, 2.0]
    assert len([c async for c in FileSource(path, SETTINGS).chunks()]) == 2
    assert not asyncio.get_running_loop().is_closed()
