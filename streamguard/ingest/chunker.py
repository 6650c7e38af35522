"""Timestamped video and audio in, aligned fixed-length A/V chunks out, for every source.

Files, RTSP and WebRTC all feed one `Chunker` with PyAV frames (timed by pts/time_base) or
decoded numpy arrays with a time in seconds. Both tracks' timestamps must come from one clock.

Timeline
  The stream's t = 0 is `origin` when given, else the first timestamp seen on either track.
  Chunk i covers [i·seconds, (i+1)·seconds); chunks come out in index order, each exactly once.

Video
  Sampled at `fps` by presentation time: the picture for instant s = start + k/fps is the latest
  frame with pts ≤ s, or, when none precedes s, the first frame after s in the chunk. A frame
  stays on screen until the next one, however sparse the frames (a 1 fps or variable-rate camera
  sends a new picture only now and then), but no longer than `max_gap`: a video track that
  stops is missing, not frozen; a source that loses its media (a dropped connection) takes the
  picture off the screen with `drop_picture`. A chunk either has all `frames_per_chunk` pictures
  or none (`video_missing`): an instant a held picture no longer reaches shows the chunk's
  previous pick. A frame is converted to RGB only when it is picked; the chunker holds the
  latest frame and the pictures picked for chunks not yet emitted, nothing more.

Audio
  Resampled by PyAV to 16 kHz float, its channels averaged to mono (as the official processor's
  audio loading does: a downmix that sums them would add 3 dB and clip), and laid on the
  timeline by timestamp. Audio that starts within `tolerance` after the stream starts with it
  (its first packet often trails the video's by a few ms). Frames run on
  back to back while their timestamps stay within `tolerance` of where the previous frame ended
  (clock jitter must not chop the sound); a hole larger than that becomes silence. Any part of
  a chunk not covered by the source is silence, measured by `audio_coverage`.

Discontinuities (never a crash, never a chunk out of order)
  A track whose timestamp leaps forward by more than `max_gap` (default 5 chunks), or goes back
  by more than `tolerance` (a wrap, a restarted camera), or, for a live source (`wall_clock`),
  leaps forward by more than the time since its last frame arrived (plus half a chunk: a clock
  that flips back and forth would run the stream ahead of the wall clock by every leap), is
  re-based: it continues at the
  furthest point either track has reached, so a long jump costs no empty chunks and a short one
  (a real outage) yields at most `max_gap` of silence and the last picture. Each re-base is
  logged, at most once per 10 s and track (a clock that flips back and forth would flood the
  log otherwise). A video frame at most
  `tolerance` older than the last one is dropped as late.

Emission
  A chunk is ready once both tracks have passed its end (the video its last sampling instant:
  no later frame can change its pictures), or once one track has passed it by
  `latency` (default 1 chunk) while the other lags or is absent, so a stream without audio or
  without video still flows. A source that knows it has only one track says so with
  `expect_tracks`, and its chunks wait for that track alone. Media arriving for an already
  emitted chunk is dropped as late.

End of stream
  `flush()` emits every chunk that holds media. The last, partial chunk is kept when it holds
  at least half a chunk of media: its audio is padded with silence (and flagged) and its last
  picture repeats. A shorter tail is dropped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np

from streamguard.config import ChunkSettings
from streamguard.ingest.repeated import RepeatedWarnings

log = logging.getLogger(__name__)

MAX_GAP_CHUNKS = 5  # default `max_gap`, in chunks
TOLERANCE_S = 0.1  # default `tolerance`
LEAP_SLACK_CHUNKS = 0.5  # a live track's timestamps may run this far ahead of its arrivals (jitter)
MIN_TAIL_CHUNKS = 0.5  # `flush` keeps a last partial chunk holding at least this much media
_EPSILON_S = 1e-3  # float slack when comparing media ends with chunk bounds


@dataclass
class AVChunk:
    """One chunk of the stream: what the model sees of `seconds` of audio and video."""

    index: int  # 0, 1, 2, … in stream order
    start: float  # stream seconds of the chunk's start
    frames: list[np.ndarray]  # frames_per_chunk RGB uint8 (H, W, 3), or none at all
    audio: np.ndarray  # float32 mono, samples_per_chunk samples in [-1, 1]
    audio_coverage: float = 1.0  # share of `audio` that came from the source; silence fills the rest
    wallclock: float = field(default_factory=time.monotonic)  # time.monotonic() when emitted

    @property
    def audio_missing(self) -> bool:
        return self.audio_coverage < 1.0

    @property
    def video_missing(self) -> bool:
        return not self.frames


class Chunker:
    """Cuts one stream's timestamped frames into `AVChunk`s; see the module docstring."""

    def __init__(
        self,
        settings: ChunkSettings,
        *,
        latency: float | None = None,
        max_gap: float | None = None,
        tolerance: float = TOLERANCE_S,
        origin: float | None = None,
        wall_clock: Callable[[], float] | None = None,
    ):
        self.settings = settings
        self._wall_clock = wall_clock  # a live source's (time.monotonic); None: a file's
        self.latency = settings.seconds if latency is None else latency
        self.max_gap = MAX_GAP_CHUNKS * settings.seconds if max_gap is None else max_gap
        self.tolerance = tolerance
        self._origin = origin
        self._video_clock, self._audio_clock = _Clock("video"), _Clock("audio")
        self._video = _VideoSampler(settings, hold=self.max_gap)
        self._audio = _AudioTimeline(settings.sample_rate)
        self._next_index = 0
        self._expected = {"video": True, "audio": True}
        self._warnings = RepeatedWarnings(log)  # a camera's clock can flip back and forth for good

    def expect_tracks(self, *, video: bool, audio: bool) -> None:
        """The tracks the source has: a chunk never waits for one it lacks."""
        if not (video or audio):
            raise ValueError("a stream has video, audio or both")
        self._expected = {"video": video, "audio": audio}

    # -- input -------------------------------------------------------------------------------

    def push_video(self, frame: av.VideoFrame | np.ndarray, t: float | None = None) -> float | None:
        """Add a video frame shown from `t` seconds (default: its pts × time_base) on; returns the
        stream time it went to (after any re-base), None when it was dropped as late.

        A numpy frame is RGB uint8 (H, W, 3); it is kept by reference until picked, so do not
        reuse its buffer.
        """
        if isinstance(frame, np.ndarray) and (
            frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8
        ):
            raise ValueError(
                f"a numpy video frame must be RGB uint8 (H, W, 3), got {frame.dtype} {frame.shape}"
            )
        raw = _source_time(frame, t)
        if raw is None:
            raise ValueError("a video frame needs a timestamp: pass t, or a frame with pts and time_base")
        clock = self._video_clock
        at = self._stream_time(clock, self._audio_clock, raw)
        if clock.anchor is not None and at <= clock.anchor:
            return None  # late or repeated: a newer frame is already on screen
        # A frame is on screen until the next one; until that arrives, assume it lasts as long as
        # the gap before it, but no longer than one sampling period: after an outage the gap would
        # claim the whole outage again as media yet to come.
        shown = at - clock.anchor if clock.anchor is not None else 0.0
        clock.end = at + min(shown, 1 / self.settings.fps)
        clock.anchor = at
        self._video.add(frame, at)
        return at

    def drop_picture(self) -> None:
        """The source lost its media (a connection dropped): the last picture is off the screen,
        so the instants before the next frame have none."""
        self._video.drop_latest()

    def push_audio(
        self, frame: av.AudioFrame | np.ndarray, t: float | None = None, sample_rate: int | None = None
    ) -> float | None:
        """Add audio starting at `t` seconds (default: its pts × time_base; without either, it
        follows the previous audio); returns the stream time it went to (None: no samples).
        Numpy audio is (samples,) mono or (channels, samples), float in [-1, 1] or int16, at
        `sample_rate` (default: the chunk rate)."""
        if isinstance(frame, np.ndarray):
            frame = audio_frame(frame, sample_rate or self.settings.sample_rate)
        if frame.samples == 0:
            return None
        raw = _source_time(frame, t)
        clock = self._audio_clock
        if raw is None:
            at = clock.anchor if clock.anchor is not None else self._video_clock.end or 0.0
        else:
            at = self._stream_time(clock, self._video_clock, raw)
            if clock.anchor is None and 0.0 < at <= self.tolerance:
                clock.shift -= at  # it trails the stream's start by a few ms: it starts with it
                at = 0.0
        if clock.anchor is not None and at - clock.anchor < self.tolerance:
            at = clock.anchor  # clock jitter: the samples run on from the previous frame
        else:
            self._audio.jump_to(round(at * self.settings.sample_rate))
        clock.anchor = clock.end = at + frame.samples / frame.sample_rate
        self._audio.append(frame)
        return at

    def _stream_time(self, clock: _Clock, other: _Clock, raw: float) -> float:
        """Stream seconds of a source timestamp on `clock`'s track, re-basing it after a jump."""
        if self._origin is None:
            self._origin = raw
        if clock.shift is None:
            clock.shift = -self._origin
        at = raw + clock.shift
        if clock.anchor is None:  # a track's first frame may come before or after the other's
            reference, behind = (other.end if other.end is not None else 0.0), self.max_gap
        else:
            reference, behind = clock.anchor, self.tolerance
        jump = at - reference
        arrived, clock.arrived = clock.arrived, self._wall_clock() if self._wall_clock else None
        if -behind <= jump <= self.max_gap and not self._leapt(jump, arrived, clock.arrived):
            return at
        target = max((end for end in (clock.end, other.end) if end is not None), default=0.0)
        clock.shift += target - at
        self._warnings.warning(
            f"{clock.name} jump",
            "%s timestamp jumped by %+.3f s; track re-based to continue at %.3f s",
            clock.name,
            jump,
            target,
        )
        return target

    def _leapt(self, jump: float, before: float | None, now: float | None) -> bool:
        """A live track's timestamps ran ahead of the wall clock: its clock leapt (a camera whose
        clock flips back and forth would run the stream ahead by every leap), no media was lost."""
        if before is None or now is None or jump <= self.tolerance:
            return False
        return jump > now - before + LEAP_SLACK_CHUNKS * self.settings.seconds

    # -- output ------------------------------------------------------------------------------

    def pop_ready(self) -> list[AVChunk]:
        """The chunks that are complete (or whose lagging track waited `latency` for), in order."""
        chunks = []
        while self._ready():
            chunks.append(self._emit())
        return chunks

    def flush(self) -> list[AVChunk]:
        """At the end of the stream: every chunk still held, the partial last one padded when it
        holds at least half a chunk of media (see the module docstring)."""
        self._audio.drain()
        reached = self.position
        chunks = []
        while (
            reached - self._next_index * self.settings.seconds
            >= MIN_TAIL_CHUNKS * self.settings.seconds - _EPSILON_S
        ):
            chunks.append(self._emit())
        return chunks

    @property
    def position(self) -> float:
        """Stream seconds the media has reached on its furthest track (-inf before any)."""
        video = self._video_clock.end if self._video_clock.end is not None else -math.inf
        return max(self._audio.position, video)

    def _ready(self) -> bool:
        end = (self._next_index + 1) * self.settings.seconds
        video, audio = self._video.latest_time, self._audio.position
        video_ok = (
            not self._expected["video"]
            or self._video.decided(self._next_index)
            or audio >= end + self.latency
        )
        audio_ok = not self._expected["audio"] or audio >= end or video >= end + self.latency
        return video_ok and audio_ok

    def _emit(self) -> AVChunk:
        index = self._next_index
        self._next_index += 1
        frames = self._video.take(index)
        audio, real = self._audio.take(self.settings.samples_per_chunk)
        return AVChunk(
            index, index * self.settings.seconds, frames, audio, real / self.settings.samples_per_chunk
        )


@dataclass
class _Clock:
    """Maps one track's source timestamps onto the stream timeline."""

    name: str
    shift: float | None = None  # stream time = source time + shift
    anchor: float | None = None  # jumps are measured from here: audio's next sample, video's last frame
    end: float | None = None  # where the track's media reaches on the stream timeline
    arrived: float | None = None  # wall-clock time of its last frame (live sources)


class _VideoSampler:
    """Picks the frame on screen at each sampling instant; holds the latest frame and the picks."""

    def __init__(self, settings: ChunkSettings, hold: float):
        self.fps = settings.fps
        self.seconds = settings.seconds
        self.per_chunk = settings.frames_per_chunk
        self.hold = hold  # how long a frame stays on screen when no other follows
        self._next_instant = 0  # global number of the first instant not decided yet
        self._picked: dict[int, np.ndarray] = {}
        self._latest: _Shown | None = None

    @property
    def latest_time(self) -> float:
        return self._latest.time if self._latest is not None else -math.inf

    def add(self, frame: av.VideoFrame | np.ndarray, at: float) -> None:
        """A frame newer than every frame before it: it decides the instants before `at`."""
        shown = _Shown(at, frame)
        while (instant := self._next_instant) / self.fps < at:
            if (held := self._on_screen(instant)) is not None:
                self._picked[instant] = held.rgb()
            elif at < self._window(instant)[1]:  # none on screen: the first frame after the instant
                self._picked[instant] = shown.rgb()
            self._next_instant += 1
        self._latest = shown

    def decided(self, index: int) -> bool:
        """Whether a frame after chunk `index`'s last instant has come: no later frame can change
        its pictures (a 1 fps camera's chunk need not wait for the frame after its end)."""
        return self._next_instant >= (index + 1) * self.per_chunk

    def drop_latest(self) -> None:
        self._latest = None

    def take(self, index: int) -> list[np.ndarray]:
        """Chunk `index`'s pictures, deciding the instants the video has not passed yet."""
        first, stop = index * self.per_chunk, (index + 1) * self.per_chunk
        for instant in range(max(self._next_instant, first), stop):
            if (held := self._on_screen(instant)) is not None:
                self._picked[instant] = held.rgb()
        self._next_instant = max(self._next_instant, stop)
        picks = [self._picked.pop(i, None) for i in range(first, stop)]
        known = [pick for pick in picks if pick is not None]
        if not known:
            return []
        # a held picture's time ran out inside the chunk: the chunk's previous pick stands in
        filled, previous = [], known[0]
        for pick in picks:
            previous = pick if pick is not None else previous
            filled.append(previous)
        return filled

    def _on_screen(self, instant: int) -> _Shown | None:
        """The latest frame, if it is on screen at `instant` (not after it, not held too long)."""
        latest = self._latest
        if latest is not None and 0.0 <= instant / self.fps - latest.time <= self.hold:
            return latest
        return None

    def _window(self, instant: int) -> tuple[float, float]:
        index = instant // self.per_chunk
        return index * self.seconds, (index + 1) * self.seconds


class _Shown:
    """A frame and the time it went on screen; converted to RGB once, when first picked."""

    def __init__(self, time: float, frame: av.VideoFrame | np.ndarray):
        self.time = time
        self._frame = frame
        self._rgb: np.ndarray | None = None

    def rgb(self) -> np.ndarray:
        # A source slower than `fps` fills several instants with one frame: convert it once.
        if self._rgb is None:
            frame = self._frame
            self._rgb = frame if isinstance(frame, np.ndarray) else frame.to_ndarray(format="rgb24")
        return self._rgb


class _AudioTimeline:
    """16 kHz mono samples on the stream's sample clock, kept from the next chunk's start on."""

    def __init__(self, rate: int):
        self.rate = rate
        self.start = 0  # stream sample of `_samples[0]`: the next chunk's first sample
        self.cursor: int | None = None  # stream sample where the next resampled sample goes
        self._samples = np.zeros(4 * rate, np.float32)  # a growable buffer, `_length` valid
        self._real = np.zeros(4 * rate, bool)  # which of them came from the source
        self._length = 0
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None  # format, layout and rate it was set up for

    @property
    def position(self) -> float:
        """Stream seconds the audio has reached (-inf before any)."""
        return -math.inf if self.cursor is None else self.cursor / self.rate

    def append(self, frame: av.AudioFrame) -> None:
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if source != self._input:  # PyAV's resampler takes one input format for life
            self.drain()
            self._input = source
        if self._resampler is None:  # planar, channels kept: `_write` averages them
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=self.rate)
        for out in self._resampler.resample(frame):
            self._write(out.to_ndarray().mean(axis=0))

    def drain(self) -> None:
        """Write out the samples the resampler still holds; the next frame starts a new one."""
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._write(out.to_ndarray().mean(axis=0))
            self._resampler, self._input = None, None

    def jump_to(self, sample: int) -> None:
        """Continue at `sample` (never backwards); a hole up to it is silence."""
        self.drain()
        self.cursor = sample if self.cursor is None else max(self.cursor, sample)

    def take(self, count: int) -> tuple[np.ndarray, int]:
        """The next chunk's `count` samples and how many of them came from the source."""
        audio = np.zeros(count, np.float32)
        held = min(count, self._length)
        audio[:held] = self._samples[:held]
        real = int(self._real[:held].sum())
        rest = self._length - held
        self._samples[:rest] = self._samples[held : self._length]
        self._real[:rest] = self._real[held : self._length]
        self._length = rest
        self.start += count
        return np.clip(audio, -1.0, 1.0, out=audio), real

    def _write(self, samples: np.ndarray) -> None:
        assert self.cursor is not None, "jump_to places the first audio"
        at, self.cursor = self.cursor, self.cursor + samples.shape[0]
        if at < self.start:  # late: this part of the stream was already emitted
            samples = samples[self.start - at :]
            at = self.start
        if samples.shape[0] == 0:
            return
        offset = at - self.start
        stop = offset + samples.shape[0]
        if stop > self._samples.shape[0]:
            grown = max(stop, 2 * self._samples.shape[0])
            self._samples = np.concatenate(
                [self._samples, np.zeros(grown - self._samples.shape[0], np.float32)]
            )
            self._real = np.concatenate([self._real, np.zeros(grown - self._real.shape[0], bool)])
        self._samples[self._length : offset] = 0.0
        self._real[self._length : offset] = False
        self._samples[offset:stop] = samples
        self._real[offset:stop] = True
        self._length = stop


def audio_frame(samples: np.ndarray, sample_rate: int) -> av.AudioFrame:
    """Numpy audio as a PyAV frame: (samples,) mono or (channels, samples) with 1 or 2 channels,
    float (in [-1, 1]) or int16."""
    data = samples[None] if samples.ndim == 1 else samples
    if data.ndim != 2 or data.shape[0] not in (1, 2):
        raise ValueError(
            f"numpy audio must be (samples,) or (channels, samples) with 1 or 2 channels, got {samples.shape}"
        )
    if data.dtype == np.int16:
        fmt = "s16p"
    elif np.issubdtype(data.dtype, np.floating):
        fmt, data = "fltp", data.astype(np.float32, copy=False)
    else:
        raise ValueError(f"numpy audio must be float or int16, got {samples.dtype}")
    layout = "mono" if data.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate = sample_rate
    return frame


def _source_time(frame: av.VideoFrame | av.AudioFrame | np.ndarray, t: float | None) -> float | None:
    if t is not None:
        return float(t)
    return None if isinstance(frame, np.ndarray) else frame.time
