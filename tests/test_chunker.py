"""The chunker on synthetic timestamp streams.

Every picture encodes its timestamp in its pixels and every audio sample is a ramp of its
timestamp, so a test can tell which frame was picked and where each sample landed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from fractions import Fraction

import av
import numpy as np
import pytest
from transformers.audio_utils import load_audio

from streamguard.config import ChunkSettings
from streamguard.ingest.chunker import AVChunk, Chunker
from streamguard.ingest.repeated import RepeatedWarnings

SETTINGS = ChunkSettings()
RATE = SETTINGS.sample_rate
RAMP_PERIOD_S = 16.0
VIDEO_TIME_BASE = Fraction(1, 90000)

Event = tuple[float, Callable[[Chunker], None]]


# -- synthetic streams ----------------------------------------------------------------------------


def picture(t: float) -> np.ndarray:
    """An 8×8 RGB frame whose pixels hold t in milliseconds (24 bits over R, G, B)."""
    ms = round(t * 1000)
    return np.full((8, 8, 3), [ms >> 16, (ms >> 8) & 255, ms & 255], np.uint8)


def stamp(frame: np.ndarray) -> float:
    r, g, b = (int(v) for v in frame[0, 0])
    return ((r << 16) + (g << 8) + b) / 1000


def ramp(t: np.ndarray) -> np.ndarray:
    """The audio value at source time t: a slow saw, 0..0.9."""
    return (t % RAMP_PERIOD_S) / RAMP_PERIOD_S * 0.9


def video(times: Iterable[float], as_av: bool = False) -> list[Event]:
    """Frames at `times`: numpy with an explicit t, or PyAV frames timed by pts/time_base."""

    def push(t: float) -> Callable[[Chunker], None]:
        if not as_av:
            return lambda c: c.push_video(picture(t), t)
        frame = av.VideoFrame.from_ndarray(picture(t), format="rgb24")
        frame.pts, frame.time_base = round(t / VIDEO_TIME_BASE), VIDEO_TIME_BASE
        return lambda c: c.push_video(frame)

    return [(t, push(t)) for t in times]


def frame_times(seconds: float, fps: float, start: float = 0.0) -> list[float]:
    return [start + i / fps for i in range(round(seconds * fps))]


def numpy_audio(
    start: float, stop: float, block: int = 320, jitter: float = 0.0, seed: int = 0
) -> list[Event]:
    """16 kHz mono float blocks of the ramp, stamped with their start; after the first block
    (which sets the audio clock) ± uniform jitter."""
    rng = np.random.default_rng(seed)
    events = []
    for first in range(round(start * RATE), round(stop * RATE), block):
        samples = ramp(np.arange(first, first + block) / RATE).astype(np.float32)
        t = first / RATE + (rng.uniform(-jitter, jitter) if first > round(start * RATE) else 0.0)
        events.append((t, lambda c, s=samples, t=t: c.push_audio(s, t, sample_rate=RATE)))
    return events


def av_audio(start: float, stop: float, rate: int, block: int, fmt: str, layout: str) -> list[Event]:
    """PyAV audio frames of the ramp in `fmt`/`layout` at `rate`, timed by pts/time_base."""
    channels = av.AudioLayout(layout).nb_channels
    events = []
    for first in range(round(start * rate), round(stop * rate), block):
        values = ramp(np.arange(first, first + block) / rate)
        if fmt.startswith("s16"):
            values = np.round(values * 32767).astype(np.int16)
        else:
            values = values.astype(np.float32)
        planar = fmt.endswith("p")
        data = np.tile(values, (channels, 1)) if planar else np.repeat(values, channels)[None]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, first, Fraction(1, rate)
        events.append((first / rate, lambda c, f=frame: c.push_audio(f)))
    return events


def run(
    events: Iterable[Event], chunker: Chunker | None = None
) -> tuple[list[AVChunk], dict[int, float | None]]:
    """Push the events in time order; the chunks, and the event time after which each came out
    (None: at flush)."""
    chunker = chunker or Chunker(SETTINGS)
    chunks, emitted_at = [], {}
    for t, push in sorted(events, key=lambda e: e[0]):
        push(chunker)
        for chunk in chunker.pop_ready():
            chunks.append(chunk)
            emitted_at[chunk.index] = t
    for chunk in chunker.flush():
        chunks.append(chunk)
        emitted_at[chunk.index] = None
    check_invariants(chunks)
    return chunks, emitted_at


def check_invariants(chunks: list[AVChunk]) -> None:
    """What every chunk of every stream must satisfy."""
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.start for c in chunks] == [i * SETTINGS.seconds for i in range(len(chunks))]
    assert all(a.wallclock <= b.wallclock for a, b in itertools.pairwise(chunks))
    for chunk in chunks:
        assert len(chunk.frames) in (0, SETTINGS.frames_per_chunk)
        assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in chunk.frames)
        assert chunk.video_missing == (not chunk.frames)
        assert chunk.audio.dtype == np.float32 and chunk.audio.shape == (SETTINGS.samples_per_chunk,)
        assert np.abs(chunk.audio).max() <= 1.0
        assert 0.0 <= chunk.audio_coverage <= 1.0
        assert chunk.audio_missing == (chunk.audio_coverage < 1.0)


def expected_stamps(times: list[float], start: float) -> list[float]:
    """The pictures the sampling rule picks for the chunk at `start`, by brute force (for
    frames less than `max_gap` apart)."""
    inside = [t for t in times if start <= t < start + SETTINGS.seconds]
    picks = []
    for k in range(SETTINGS.frames_per_chunk):
        instant = start + k / SETTINGS.fps
        before = [t for t in times if t <= instant]
        after = [t for t in inside if t > instant]
        if before or after:
            picks.append(max(before) if before else min(after))
    return [round(t * 1000) / 1000 for t in picks]


def stream_ramp(chunk: AVChunk, offset: float = 0.0) -> np.ndarray:
    """The ramp the chunk's samples should hold if source time = stream time + offset."""
    return ramp(chunk.start + offset + np.arange(SETTINGS.samples_per_chunk) / RATE)


# -- sampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [30.0, 25.0, 7.5])
def test_video_is_sampled_at_2_fps_by_presentation_time(fps: float) -> None:
    times = frame_times(6.0, fps)
    audio = av_audio(0.0, 6.0, 48000, 960, "s16", "stereo")
    chunks, _ = run(video(times, as_av=True) + audio)
    assert len(chunks) == 3
    for chunk in chunks:
        assert [stamp(f) for f in chunk.frames] == expected_stamps(times, chunk.start)
        assert chunk.frames[0].shape == (8, 8, 3)
        assert not chunk.audio_missing


def test_variable_frame_rate_and_a_slow_source() -> None:
    rng = np.random.default_rng(1)
    times = list(np.cumsum(rng.choice([1 / 60, 1 / 30, 0.1, 0.3, 0.7], size=60)))
    chunks, _ = run(video(times) + numpy_audio(0.0, times[-1]))
    assert len(chunks) >= 3
    for chunk in chunks:
        assert [stamp(f) for f in chunk.frames] == expected_stamps(times, chunk.start)
    # 1 fps: each frame fills two instants, with one shared picture rather than two conversions.
    slow, _ = run(video(frame_times(4.0, 1.0), as_av=True))
    assert [stamp(f) for f in slow[0].frames] == [0.0, 0.0, 1.0, 1.0]
    assert slow[0].frames[0] is slow[0].frames[1]


def test_first_frame_after_an_instant_when_none_precedes_it_in_the_chunk() -> None:
    # Video starts at 2.7 s while audio runs from 0: chunk 0 has no picture at all, and chunk 1's
    # instants 2.0 and 2.5 show the first frame after them.
    times = frame_times(3.3, 30.0, start=2.7)
    chunks, _ = run(video(times) + numpy_audio(0.0, 6.0))
    assert chunks[0].video_missing and chunks[0].frames == []
    assert [stamp(f) for f in chunks[1].frames] == expected_stamps(times, 2.0)
    assert [stamp(f) for f in chunks[1].frames][:2] == [2.7, 2.7]


def test_a_frame_older_than_the_last_one_is_ignored() -> None:
    times = frame_times(4.0, 10.0)
    late = [(0.52, lambda c: c.push_video(picture(0.45), 0.45))]  # arrives after 0.5, stamped before it
    chunks, _ = run(video(times) + late)
    assert [stamp(f) for f in chunks[0].frames] == [0.0, 0.5, 1.0, 1.5]


# -- audio ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "block", "fmt", "layout"),
    [(48000, 960, "s16", "stereo"), (44100, 1024, "fltp", "stereo"), (44100, 1024, "fltp", "mono")],
)
def test_audio_is_resampled_to_16k_mono_in_place(rate: int, block: int, fmt: str, layout: str) -> None:
    chunks, _ = run(av_audio(0.0, 6.0, rate, block, fmt, layout) + video(frame_times(6.0, 30.0)))
    assert len(chunks) == 3 and all(c.audio_coverage == 1.0 for c in chunks)
    for chunk in chunks:
        # A stereo downmix scales the level; a straight-line fit finds level and time offset.
        t = chunk.start + np.arange(SETTINGS.samples_per_chunk) / RATE
        slope, intercept = np.polyfit(t, chunk.audio, 1)
        assert slope > 0 and abs(intercept / slope) < 0.002  # within 2 ms of its timestamp
        residual = chunk.audio - (slope * t + intercept)
        assert np.abs(residual[64:-64]).max() < 2e-3  # the resampler's edge effects aside


def test_16k_mono_float_passes_through_sample_exact() -> None:
    chunks, _ = run(numpy_audio(0.0, 6.0) + video(frame_times(6.0, 30.0)))
    for chunk in chunks:
        np.testing.assert_allclose(chunk.audio, stream_ramp(chunk), atol=1e-6)


def sine(rate: int, seconds: float, level: float, hz: float = 440.0) -> np.ndarray:
    return (level * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


@pytest.mark.parametrize(("rate", "fmt"), [(16000, "flt"), (48000, "s16")])
def test_a_stereo_downmix_averages_identical_channels_to_the_same_level(rate: int, fmt: str) -> None:
    left = sine(rate, 4.0, 0.9)
    stereo = np.stack([left, left])
    if fmt == "s16":  # as aiortc's Opus decoder and AAC cameras hand it out
        stereo = np.round(stereo * 32767).astype(np.int16)
    chunker = Chunker(SETTINGS)
    chunker.push_audio(stereo, 0.0, sample_rate=rate)
    chunks = chunker.flush()
    check_invariants(chunks)
    audio = np.concatenate([chunk.audio for chunk in chunks])[64:-64]  # the resampler's edges aside
    assert np.abs(audio).max() == pytest.approx(0.9, rel=0.01)  # not 0.9·√2, clipped at 1
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.9 / np.sqrt(2), rel=0.01)
    assert not (np.abs(audio) >= 1.0).any()


def test_a_stereo_downmix_is_the_official_audio_loading(tmp_path) -> None:
    # transformers' load_audio (the official processor's input path, as librosa.load) averages
    # the channels; two different channels show it is the mean, not a sum or one channel.
    soundfile = pytest.importorskip("soundfile")
    stereo = np.stack([sine(RATE, 4.0, 0.6, 440.0), sine(RATE, 4.0, 0.7, 660.0)])
    soundfile.write(tmp_path / "stereo.wav", stereo.T, RATE, subtype="FLOAT")
    official = load_audio(str(tmp_path / "stereo.wav"), sampling_rate=RATE, backend="soundfile")
    chunker = Chunker(SETTINGS)
    chunker.push_audio(stereo, 0.0, sample_rate=RATE)
    chunks = chunker.flush()
    np.testing.assert_allclose(np.concatenate([chunk.audio for chunk in chunks]), official, atol=1e-6)


def test_audio_starting_after_the_video_is_leading_silence() -> None:
    chunks, _ = run(video(frame_times(4.0, 30.0)) + numpy_audio(0.7, 4.0))
    first = chunks[0]
    assert first.audio_missing and first.audio_coverage == pytest.approx(1.3 / 2.0)
    lead = round(0.7 * RATE)
    assert not first.audio[:lead].any()
    np.testing.assert_allclose(first.audio[lead:], stream_ramp(first)[lead:], atol=1e-6)
    assert not first.video_missing and not chunks[1].audio_missing


def test_jittery_audio_timestamps_keep_the_samples_back_to_back() -> None:
    # ±8 ms of timestamp jitter on 20 ms blocks: within tolerance, so no holes, no overlaps.
    chunks, _ = run(numpy_audio(0.0, 6.0, jitter=0.008) + video(frame_times(6.0, 30.0)))
    assert all(c.audio_coverage == 1.0 for c in chunks)
    for chunk in chunks:
        np.testing.assert_allclose(chunk.audio, stream_ramp(chunk), atol=1e-6)


def test_jittery_video_timestamps() -> None:
    rng = np.random.default_rng(2)
    times = [t + rng.uniform(-0.012, 0.012) for t in frame_times(6.0, 30.0, start=0.02)]
    chunks, _ = run(video(times) + numpy_audio(0.0, 6.0))
    for chunk in chunks:
        assert [stamp(f) for f in chunk.frames] == expected_stamps(times, chunk.start)


def test_numpy_audio_without_a_timestamp_follows_the_previous_audio() -> None:
    chunker = Chunker(SETTINGS)
    block = ramp(np.arange(0, 16000) / RATE).astype(np.float32)
    chunker.push_audio(block, 0.0)
    chunker.push_audio(ramp(np.arange(16000, 64000) / RATE).astype(np.float32))
    chunks = chunker.flush()
    assert [c.audio_coverage for c in chunks] == [1.0, 1.0]
    np.testing.assert_allclose(chunks[1].audio, stream_ramp(chunks[1]), atol=1e-6)


def test_a_change_of_audio_format_mid_stream() -> None:
    # A WebRTC peer renegotiating: 48 kHz stereo s16 frames, then 16 kHz mono float.
    events = av_audio(0.0, 3.0, 48000, 960, "s16", "stereo") + numpy_audio(3.0, 6.0)
    chunks, _ = run(events + video(frame_times(6.0, 30.0)))
    assert len(chunks) == 3 and all(c.audio_coverage > 0.999 for c in chunks)
    np.testing.assert_allclose(chunks[2].audio, stream_ramp(chunks[2]), atol=1e-6)


# -- missing tracks, latency --------------------------------------------------------------------


def test_without_audio_chunks_flow_one_chunk_late() -> None:
    chunks, emitted_at = run(video(frame_times(10.0, 30.0)))
    assert len(chunks) == 5
    assert all(c.audio_coverage == 0.0 and not c.audio.any() for c in chunks)
    assert all(not c.video_missing for c in chunks)
    # Chunk i leaves once the video is one chunk (the latency allowance) past its end.
    for i in (0, 1, 2):
        assert (i + 2) * 2.0 <= emitted_at[i] < (i + 2) * 2.0 + 1 / 30 + 1e-9
    assert emitted_at[4] is None  # the last ones at flush


def test_without_video_chunks_are_audio_only() -> None:
    chunks, emitted_at = run(numpy_audio(0.0, 6.0))
    assert len(chunks) == 3 and all(c.video_missing and c.frames == [] for c in chunks)
    assert all(c.audio_coverage == 1.0 for c in chunks)
    assert emitted_at[0] == pytest.approx(4.0 - 320 / RATE)  # the block that reaches 4 s


@pytest.mark.parametrize("track", ["video", "audio"])
def test_a_source_with_one_track_says_so_and_its_chunks_do_not_wait_for_the_other(track: str) -> None:
    events = video(frame_times(6.0, 30.0)) if track == "video" else numpy_audio(0.0, 6.0)
    chunker = Chunker(SETTINGS)
    chunker.expect_tracks(video=track == "video", audio=track == "audio")
    _, emitted_at = run(events, chunker)
    # the video once a frame after the chunk's last instant (1.5 s) came; the audio once it reached 2 s
    assert emitted_at[0] == pytest.approx(1.5 + 1 / 30 if track == "video" else 2.0 - 320 / RATE)
    assert emitted_at[1] == pytest.approx(3.5 + 1 / 30 if track == "video" else 4.0 - 320 / RATE)


def test_audio_a_few_ms_behind_the_first_video_frame_starts_with_the_stream() -> None:
    chunks, _ = run(video(frame_times(6.0, 30.0)) + numpy_audio(0.004, 6.004))
    assert chunks[0].audio_coverage == 1.0  # as a WebRTC peer's audio, a packet after the video
    np.testing.assert_allclose(chunks[0].audio[:1000], ramp(0.004 + np.arange(1000) / RATE), atol=1e-6)


def test_with_both_tracks_a_chunk_leaves_as_soon_as_both_pass_its_end() -> None:
    _, emitted_at = run(video(frame_times(6.0, 30.0)) + numpy_audio(0.0, 6.0))
    # the audio block that reaches 2.0 s, after the video passed the chunk's last instant (1.5 s)
    assert emitted_at[0] == pytest.approx(2.0 - 320 / RATE)
    assert emitted_at[1] == pytest.approx(4.0 - 320 / RATE)


def test_a_1_fps_chunk_leaves_once_a_frame_passes_its_last_instant() -> None:
    # Frames at 0.6, 1.6, 2.6, …: the 1.6 s frame decides chunk 0's pictures (its last instant
    # is 1.5 s), so the chunk leaves when the audio reaches 2 s, not at the 2.6 s frame.
    chunks, emitted_at = run(video(frame_times(5.0, 1.0, start=0.6)) + numpy_audio(0.0, 6.0))
    assert emitted_at[0] == pytest.approx(2.0 - 320 / RATE)
    assert [stamp(f) for f in chunks[0].frames] == [0.6] * 4
    assert [stamp(f) for f in chunks[1].frames] == [1.6, 1.6, 2.6, 2.6]  # held from the last chunk


def test_a_track_later_than_the_latency_allowance_loses_what_was_already_emitted() -> None:
    chunker = Chunker(SETTINGS)
    out = []
    for _, push in video(frame_times(6.0, 30.0)):  # the video runs 6 s ahead
        push(chunker)
        out += chunker.pop_ready()
    assert [c.index for c in out] == [0]  # chunk 0 waited one chunk for audio, then left
    for _, push in numpy_audio(0.0, 6.0):
        push(chunker)
        out += chunker.pop_ready()
    out += chunker.flush()
    check_invariants(out)
    assert [c.audio_coverage for c in out] == [0.0, 1.0, 1.0]


# -- discontinuities ------------------------------------------------------------------------------


@pytest.mark.parametrize("picture_lost", [False, True])
def test_a_forward_jump_within_the_cap_is_a_flagged_gap(picture_lost: bool) -> None:
    events = video(frame_times(3.0, 30.0)) + numpy_audio(0.0, 3.0)
    if picture_lost:  # the source says its connection dropped
        events.append((5.0, lambda c: c.drop_picture()))
    events += video(frame_times(3.0, 30.0, start=7.0)) + numpy_audio(7.0, 10.0)
    chunks, _ = run(events)
    assert len(chunks) == 5
    assert [c.audio_coverage for c in chunks] == pytest.approx([1.0, 0.5, 0.0, 0.5, 1.0])
    if picture_lost:
        assert [c.video_missing for c in chunks] == [False, False, True, False, False]
        assert [stamp(f) for f in chunks[3].frames] == [7.0, 7.0, 7.0, 7.5]
    else:  # nothing new on screen: the last picture stays
        assert not any(c.video_missing for c in chunks)
        assert [stamp(f) for f in chunks[2].frames] == [2.967] * 4
        assert [stamp(f) for f in chunks[3].frames] == [2.967, 2.967, 7.0, 7.5]
    np.testing.assert_allclose(chunks[3].audio[RATE:], stream_ramp(chunks[3])[RATE:], atol=1e-6)


def test_a_frame_after_an_outage_does_not_stretch_the_stream_by_the_outage() -> None:
    # Video to 3 s, then one frame at 9 s: the stream reaches 9.5 s (one sampling period), not
    # 15 s (the 6 s gap taken for that frame's duration), so flush adds no chunks past 10 s.
    chunks, _ = run(video([*frame_times(3.0, 30.0), 9.0]))
    assert len(chunks) == 5 and not any(c.video_missing for c in chunks)
    assert [stamp(f) for f in chunks[3].frames] == [2.967] * 4  # held until the next frame
    assert [stamp(f) for f in chunks[4].frames] == [2.967, 2.967, 9.0, 9.0]


def test_sparse_frames_stay_on_screen_until_the_next_one() -> None:
    # A variable-rate camera that sends a picture only when the scene changes.
    times = [0.0, 3.3, 7.9]
    chunks, _ = run(video(times) + numpy_audio(0.0, 10.0))
    assert [[stamp(f) for f in c.frames] for c in chunks] == [
        [0.0] * 4,
        [0.0, 0.0, 0.0, 3.3],
        [3.3] * 4,
        [3.3, 3.3, 3.3, 3.3],
        [7.9] * 4,
    ]
    assert chunks[1].frames[0] is chunks[0].frames[0]  # one conversion for every instant it fills


def test_a_picture_is_held_for_at_most_max_gap() -> None:
    # The video stops at 1 s while the audio runs on: from 11 s on the video is missing.
    chunks, _ = run(video(frame_times(1.0, 30.0)) + numpy_audio(0.0, 16.0))
    assert [c.video_missing for c in chunks] == [False] * 6 + [True] * 2
    assert [stamp(f) for f in chunks[5].frames] == [0.967] * 4  # 11.0 and 11.5 repeat the pick


def flipping_audio(seconds: int, leap: float = 3.0) -> list[Event]:
    """10 ms audio blocks from a clock that runs `leap` s ahead for one second in every two (as
    a camera's whose RTCP keeps re-syncing it)."""
    events = []
    for second in range(seconds):
        shift = leap if second % 2 else 0.0
        events += [
            (t, lambda c, t=t, shift=shift: c.push_audio(np.zeros(160, np.float32), t + shift))
            for t in np.arange(second, second + 1, 0.01)
        ]
    return events


def test_a_clock_flipping_back_and_forth_is_logged_once_per_interval(caplog) -> None:
    events = video(frame_times(20.0, 30.0)) + flipping_audio(20)
    with caplog.at_level(logging.WARNING, logger="streamguard.ingest.chunker"):
        chunks, _ = run(events)
    assert len(chunks) >= 9
    assert len([r for r in caplog.records if "audio timestamp jumped" in r.getMessage()]) == 1


def test_a_live_clock_that_leaps_ahead_of_its_arrivals_is_rebased_not_a_hole() -> None:
    # The same flipping audio clock from a live source, frames arriving in real time: the
    # leaps ahead are the clock's fault, so the timeline keeps to the 20 s that passed.
    now = [0.0]
    chunker = Chunker(SETTINGS, wall_clock=lambda: now[0])
    events = video(frame_times(20.0, 30.0)) + flipping_audio(20)
    chunks = []
    for t, push in sorted(events, key=lambda e: e[0]):
        now[0] = t  # it arrives when it happens
        push(chunker)
        chunks += chunker.pop_ready()
    assert len(chunks) <= 10 and chunker.position <= 20.5  # without the wall clock: 50 s, 24 chunks
    assert all(not c.video_missing for c in chunks)


def test_repeated_warnings_go_through_once_per_interval_and_count_the_rest(caplog) -> None:
    now = [0.0]
    warnings = RepeatedWarnings(logging.getLogger("test.repeated"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.repeated"):
        for second in range(25):
            now[0] = float(second)
            warnings.warning("jump", "jumped by %d", second)
            warnings.warning("other", "behind")
    jumps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("jumped")]
    assert jumps == [
        "jumped by 0",
        "jumped by 10 (9 more in the last 10 s)",
        "jumped by 20 (9 more in the last 10 s)",
    ]
    assert len(caplog.records) == 6  # each kind on its own


def test_a_long_forward_jump_rebases_instead_of_emitting_an_hour_of_gaps() -> None:
    events = video(frame_times(3.0, 30.0)) + numpy_audio(0.0, 3.0)
    events += video(frame_times(3.0, 30.0, start=3600.0)) + numpy_audio(3600.0, 3603.0)
    chunks, _ = run(events)
    assert len(chunks) == 3  # 6 s of media
    assert all(c.audio_coverage == 1.0 and not c.video_missing for c in chunks)
    # The stream picks up right after the jump: chunk 1's second half is the hour-later media.
    stamps = [stamp(f) for f in chunks[1].frames]
    assert stamps[:2] == [2.0, 2.5] and 3600.4 < stamps[3] <= 3600.5


@pytest.mark.parametrize("back_to", [0.0, 2.5])
def test_a_backwards_jump_rebases_and_keeps_order(back_to: float) -> None:
    # 5 s of stream, then timestamps restart (a wrap or a camera restart) for 3 s more.
    chunks, _ = run(
        video(frame_times(5.0, 30.0))
        + numpy_audio(0.0, 5.0)
        + [(5.0 + t, push) for t, push in video(frame_times(3.0, 30.0, start=back_to))]
        + [(5.0 + t, push) for t, push in numpy_audio(back_to, back_to + 3.0)]
    )
    assert len(chunks) == 4  # 8 s of media
    assert all(c.audio_coverage == 1.0 and not c.video_missing for c in chunks)
    stamps = [stamp(f) for f in chunks[2].frames]
    assert stamps[:2] == [4.0, 4.5] and back_to <= stamps[2] < back_to + 0.1
    # The restarted audio follows on without a hole: the first sample after 5 s is its start.
    after = round(1.0 * RATE)
    assert chunks[2].audio[after] == pytest.approx(ramp(np.array(back_to))[()], abs=1e-6)


def test_an_explicit_origin_puts_t_0_before_the_first_timestamp() -> None:
    # A file whose streams start at 10 s while its first frames are stamped 10.5 s.
    events = video(frame_times(3.5, 30.0, start=10.5)) + numpy_audio(10.5, 14.0)
    chunks, _ = run(events, Chunker(SETTINGS, origin=10.0))
    assert len(chunks) == 2 and chunks[0].audio_coverage == pytest.approx(0.75)
    assert [stamp(f) for f in chunks[0].frames][:2] == [10.5, 10.5]


def test_a_track_starting_far_from_the_other_is_put_at_the_stream_frontier() -> None:
    # Independent clock bases (as RTP gives per track): audio stamped 500 s off the video.
    events = video(frame_times(6.0, 30.0)) + [(t - 500.0, p) for t, p in numpy_audio(500.0, 506.0)]
    chunks, _ = run(events)
    assert len(chunks) == 3 and all(c.audio_coverage == 1.0 for c in chunks)


# -- end of stream --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "count"), [(0.5, 0), (0.9, 0), (1.0, 1), (2.0, 1), (4.9, 2), (5.0, 3), (6.0, 3)]
)
def test_flush_pads_a_last_chunk_with_half_a_chunk_of_media_or_drops_it(seconds: float, count: int) -> None:
    times = frame_times(seconds, 30.0)
    chunks, _ = run(video(times) + numpy_audio(0.0, seconds))
    assert len(chunks) == count
    if count and seconds < count * 2.0:  # a padded tail
        last = chunks[-1]
        covered = seconds - last.start
        assert last.audio_coverage == pytest.approx(covered / 2.0)
        assert not last.audio[round(covered * RATE) :].any()
        assert [stamp(f) for f in last.frames] == expected_stamps(times, last.start)
        assert stamp(last.frames[-1]) == round(times[-1] * 1000) / 1000  # the last picture repeats


def test_nothing_pushed_flushes_nothing() -> None:
    assert Chunker(SETTINGS).flush() == []


# -- bad input ------------------------------------------------------------------------------------


def test_bad_frames_are_clear_value_errors() -> None:
    chunker = Chunker(SETTINGS)
    with pytest.raises(ValueError, match="timestamp"):
        chunker.push_video(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"RGB uint8 \(H, W, 3\)"):
        chunker.push_video(np.zeros((8, 8), np.uint8), 0.0)
    with pytest.raises(ValueError, match=r"\(channels, samples\)"):
        chunker.push_audio(np.zeros((960, 2), np.float32), 0.0)
    with pytest.raises(ValueError, match="float or int16"):
        chunker.push_audio(np.zeros(960, np.int32), 0.0)
