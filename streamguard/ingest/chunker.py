"""Timestamped video and audio frames in, aligned fixed-length A/V chunks out.

Every source (files, RTSP, WebRTC) feeds this one class. The stream's t = 0 is the first
timestamp seen on either track. Video is sampled at `fps` by presentation time: sample k is the
latest frame shown at k/fps (or the first frame after it when none was shown yet). Audio is
resampled to 16 kHz mono float and laid on the same timeline; holes become silence and are
flagged. Only what the sampler needs is kept: the last frame, the samples still to emit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import av
import numpy as np

from streamguard.config import ChunkSettings

# A timestamp that jumps further than this (or backwards) re-bases that track's timeline so it
# continues where it was, instead of emitting hours of empty chunks or going back in time.
MAX_GAP_S = 10.0
# Audio timestamps may wobble by a few milliseconds; a larger hole is filled with silence.
AUDIO_GAP_TOLERANCE_S = 0.05


@dataclass
class AVChunk:
    index: int
    start: float
    frames: list[np.ndarray]  # frames_per_chunk RGB uint8 (H, W, 3); empty when the chunk has no video
    audio: np.ndarray  # float32 mono, samples_per_chunk samples
    audio_coverage: float = 1.0  # share of the audio that came from the source (the rest is silence)
    wallclock: float = field(default_factory=time.monotonic)

    @property
    def audio_missing(self) -> bool:
        return self.audio_coverage < 1.0

    @property
    def video_missing(self) -> bool:
        return not self.frames


class _Track:
    """Maps a source's timestamps onto the stream timeline, re-basing on jumps."""

    def __init__(self) -> None:
        self.offset: float | None = None
        self.last: float | None = None

    def stream_time(self, t: float, origin: float, step: float) -> float:
        if self.offset is None:
            self.offset = origin
        elif self.last is not None and (
            t - self.offset > self.last + MAX_GAP_S or t - self.offset < self.last - step
        ):
            self.offset = t - (self.last + step)
        self.last = t - self.offset
        return self.last


class Chunker:
    def __init__(self, settings: ChunkSettings, stall_chunks: float = 1.0):
        self.settings = settings
        self.rate = settings.sample_rate
        self.samples_per_chunk = settings.samples_per_chunk
        self.frames_per_chunk = settings.frames_per_chunk
        # A chunk waits this long for a track that has stopped before it is emitted without it.
        self.stall_s = stall_chunks * settings.seconds
        self._origin: float | None = None
        self._video_track, self._audio_track = _Track(), _Track()
        self._resampler: av.AudioResampler | None = None
        self._prev_frame: tuple[float, av.VideoFrame | np.ndarray] | None = None
        self._next_sample = 0  # global index of the next video sample instant
        self._samples: dict[int, np.ndarray] = {}
        self._audio = np.zeros(0, dtype=np.float32)  # samples from `_audio_start` on
        self._covered = np.zeros(0, dtype=bool)
        self._audio_start = 0  # absolute sample index of `_audio[0]`
        self._audio_end = 0  # absolute sample index written so far
        self._video_time = -math.inf
        self._audio_time = -math.inf
        self._next_chunk = 0

    # -- input -----------------------------------------------------------------------------

    def push_video(self, frame: av.VideoFrame | np.ndarray, t: float | None = None) -> None:
        t = _timestamp(frame, t)
        now = self._video_track.stream_time(t, self._origin_for(t), 1.0 / self.settings.fps)
        while self._next_sample / self.settings.fps <= now:
            instant = self._next_sample / self.settings.fps
            use_prev = self._prev_frame is not None and self._prev_frame[0] <= instant
            self._samples[self._next_sample] = _rgb(self._prev_frame[1] if use_prev else frame)
            self._next_sample += 1
        self._prev_frame = (now, frame)
        self._video_time = now

    def push_audio(
        self, frame: av.AudioFrame | np.ndarray, t: float | None = None, sample_rate: int | None = None
    ) -> None:
        if isinstance(frame, np.ndarray):
            frame = _audio_frame(frame, sample_rate or self.rate)
        t = _timestamp(frame, t)
        now = self._audio_track.stream_time(t, self._origin_for(t), frame.samples / frame.sample_rate)
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
        frame.pts = None  # the timeline is ours; the resampler need not check continuity
        resampled = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        samples = np.concatenate(resampled) if resampled else np.zeros(0, np.float32)
        # Resampled audio runs on from where the last block ended (the resampler holds a few
        # samples back); only a real hole in the timestamps moves it forward.
        at = round(now * self.rate)
        if at - self._audio_end > AUDIO_GAP_TOLERANCE_S * self.rate or self._audio_end == 0:
            self._audio_end = max(self._audio_end, at)
        self._write_audio(self._audio_end, samples.astype(np.float32, copy=False))
        self._audio_time = max(self._audio_time, now + frame.samples / frame.sample_rate)

    def _origin_for(self, t: float) -> float:
        if self._origin is None:
            self._origin = t
        return self._origin

    def _write_audio(self, at: int, samples: np.ndarray) -> None:
        if at < self._audio_end:  # overlap with what is already written: keep the earlier audio
            samples = samples[self._audio_end - at :]
            at = self._audio_end
        end = at + samples.shape[0]
        need = end - self._audio_start
        if need > self._audio.shape[0]:
            self._audio = np.concatenate([self._audio, np.zeros(need - self._audio.shape[0], np.float32)])
            self._covered = np.concatenate([self._covered, np.zeros(need - self._covered.shape[0], bool)])
        self._audio[at - self._audio_start : end - self._audio_start] = samples
        self._covered[at - self._audio_start : end - self._audio_start] = True
        self._audio_end = max(self._audio_end, end)

    # -- output ----------------------------------------------------------------------------

    def pop_ready(self) -> list[AVChunk]:
        chunks = []
        while self._ready(self._next_chunk):
            chunks.append(self._emit())
        return chunks

    def flush(self) -> list[AVChunk]:
        """Emit what is left at the end of a stream. The last, partial chunk is padded (the last
        frame repeated, silence) when it holds at least half a chunk of media, else dropped."""
        if self._resampler is not None:  # the samples the resampler still holds back
            tail = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(None)]
            if tail:
                self._write_audio(self._audio_end, np.concatenate(tail).astype(np.float32, copy=False))
        chunks = self.pop_ready()
        last_media = max(self._video_time, self._audio_time)
        while (
            self._origin is not None and (self._next_chunk + 0.5) * self.settings.seconds <= last_media + 1e-9
        ):
            chunks.append(self._emit())
        return chunks

    def _ready(self, index: int) -> bool:
        end = (index + 1) * self.settings.seconds
        video_done = self._next_sample >= (index + 1) * self.frames_per_chunk
        audio_done = self._audio_end >= (index + 1) * self.samples_per_chunk
        newest = max(self._video_time, self._audio_time)
        video_ok = video_done or self._video_time < newest - self.stall_s
        audio_ok = audio_done or self._audio_time < newest - self.stall_s
        return self._origin is not None and newest >= end and video_ok and audio_ok

    def _emit(self) -> AVChunk:
        index = self._next_chunk
        first = index * self.frames_per_chunk
        frames = [
            self._samples.pop(k) for k in range(first, first + self.frames_per_chunk) if k in self._samples
        ]
        if frames and len(frames) < self.frames_per_chunk:
            frames += [frames[-1]] * (self.frames_per_chunk - len(frames))
        lo, hi = index * self.samples_per_chunk, (index + 1) * self.samples_per_chunk
        audio = np.zeros(self.samples_per_chunk, np.float32)
        covered = 0
        a, b = max(lo, self._audio_start), min(hi, self._audio_start + self._audio.shape[0])
        if b > a:
            audio[a - lo : b - lo] = self._audio[a - self._audio_start : b - self._audio_start]
            covered = int(self._covered[a - self._audio_start : b - self._audio_start].sum())
        # forget what this chunk used
        cut = max(0, min(hi, self._audio_start + self._audio.shape[0]) - self._audio_start)
        self._audio, self._covered = self._audio[cut:], self._covered[cut:]
        self._audio_start += cut
        self._audio_end = max(self._audio_end, self._audio_start)
        if self._next_sample < first + self.frames_per_chunk:  # video stalled: skip its instants
            self._next_sample = first + self.frames_per_chunk
        self._next_chunk += 1
        return AVChunk(index, index * self.settings.seconds, frames, audio, covered / self.samples_per_chunk)


def _timestamp(frame: av.VideoFrame | av.AudioFrame | np.ndarray, t: float | None) -> float:
    if t is not None:
        return float(t)
    if isinstance(frame, np.ndarray) or frame.pts is None or frame.time_base is None:
        raise ValueError("a frame without a timestamp needs an explicit t")
    return float(frame.pts * frame.time_base)


def _rgb(frame: av.VideoFrame | np.ndarray) -> np.ndarray:
    return frame if isinstance(frame, np.ndarray) else frame.to_ndarray(format="rgb24")


def _audio_frame(samples: np.ndarray, rate: int) -> av.AudioFrame:
    """Wrap float or int16 numpy audio, (n,) mono or (channels, n), as a PyAV frame."""
    data = np.atleast_2d(samples)
    fmt = "s16p" if data.dtype == np.int16 else "fltp"
    data = data.astype(np.int16 if fmt == "s16p" else np.float32, copy=False)
    layout = "mono" if data.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame
