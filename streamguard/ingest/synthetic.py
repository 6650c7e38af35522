"""Small generated clips for tests, benchmarks and demos, encoded with PyAV.

Pictures and sound come from `generate_frames` and `generate_audio`; every writer encodes
what they return, so a clip, a .y4m fake webcam and a .wav fake microphone show and play the
same thing for the same arguments. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.container import OutputContainer
from av.stream import Stream

Motion = Literal["static", "moving", "pan", "drift", "clock", "enter", "ir"]
Sound = Literal["tone", "noise", "silence"]

# One pitch per 2-second stretch of a tone, so neighbouring chunks sound different.
TONE_PITCHES_HZ = (330.0, 440.0, 550.0, 660.0, 880.0, 495.0, 770.0, 385.0)
TONE_STRETCH_S = 2.0
AMPLITUDE = 0.3
AUDIO_BLOCK = 1024  # samples per encoded audio frame: an AAC frame
PAN_SPEED = 0.1  # of the frame width per second: a slow pan
PAN_WORLD = 3  # the panned image is this many frame widths wide (and wraps around)
DRIFT_GAIN = 0.2  # "drift": auto-exposure gain swings ±20% ...
DRIFT_PERIOD_S = 120.0  # ... over two minutes (~2% per 2-s chunk at most)
ENTER_AREA = 0.02  # "enter": the object covers 2% of the frame (a person at 20 m)
ENTER_COLOUR = (70, 80, 95)  # dark clothing: ~50 levels of luma under the scene around it
CLOCK_AREA = (0.2, 0.05)  # "clock": the overlay's share of the width and the height, top left
IR_GAIN, IR_OFFSET = 1.4, 12.0  # "ir": grey from the switch on, brighter, as IR night mode is


def video_codec() -> str:
    """H.264 through libx264 where PyAV's FFmpeg has it, else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def generate_frames(
    seconds: float,
    width: int = 160,
    height: int = 120,
    fps: float = 15,
    motion: Motion = "static",
    seed: int = 0,
    noise: float = 0.0,
    event_at: float | None = None,
) -> Iterator[np.ndarray]:
    """RGB uint8 (height, width, 3) frames at `fps` for `seconds`.

    "static" repeats one textured scene; "moving" draws squares that cross the frame in about a
    second; "pan" slides a window slowly over a scene `PAN_WORLD` frames wide. What a fixed camera
    shows over the static scene: "drift", its exposure swinging slowly; "clock", an MM:SS
    overlay; "enter", an object of `ENTER_AREA` of the frame that appears at `event_at` (default:
    half way) and stays; "ir", the switch to grey night mode at `event_at`.
    `noise`: σ of fresh Gaussian sensor noise on every frame, in levels of 0..255.
    """
    world = _scene(width * PAN_WORLD if motion == "pan" else width, height, seed)
    rng = np.random.default_rng(seed + 1)
    squares = [(rng.uniform(0, 10), rng.uniform(0.6, 1.2), rng.integers(0, 256, 3)) for _ in range(3)]
    size = max(2, height // 4)
    event_at = seconds / 2 if event_at is None else event_at
    for i in range(round(seconds * fps)):
        t = i / fps
        if motion == "pan":
            columns = (np.arange(width) + round(t * PAN_SPEED * width)) % world.shape[1]
            frame = world[:, columns]
        else:
            frame = world.copy()
        if motion == "moving":
            for phase, speed, colour in squares:
                x = _bounce(phase + t * speed * 1.7, width - size)
                y = _bounce(phase * 0.7 + t * speed, height - size)
                frame[y : y + size, x : x + size] = colour
        picture = frame.astype(np.float32)
        if motion == "drift":
            picture *= 1 + DRIFT_GAIN * np.sin(2 * np.pi * t / DRIFT_PERIOD_S)
        elif motion == "clock":
            _draw_clock(picture, int(t))
        elif motion == "enter" and t >= event_at:
            top, left, bottom, right = enter_box(width, height)
            picture[top:bottom, left:right] = ENTER_COLOUR
        elif motion == "ir" and t >= event_at:
            luma = picture @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            picture = np.repeat((IR_GAIN * luma + IR_OFFSET)[..., None], 3, axis=-1)
        if noise:
            picture += rng.normal(0.0, noise, picture.shape).astype(np.float32)
        yield np.clip(picture, 0, 255).round().astype(np.uint8)


def enter_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the "enter" object: upright, twice as tall as wide, right
    of the centre, covering `ENTER_AREA` of the frame."""
    box_w = max(1, round((ENTER_AREA * width * height / 2) ** 0.5))
    box_h = min(height, 2 * box_w)
    top, left = round(height * 0.45), round(width * 0.6)
    return top, left, min(height, top + box_h), min(width, left + box_w)


# Seven-segment digits: which of the segments a (top), b (top right), c (bottom right),
# d (bottom), e (bottom left), f (top left), g (middle) each digit lights.
_DIGITS = ("abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg")


def _draw_clock(picture: np.ndarray, second: int) -> None:
    """MM:SS in bright seven-segment digits on a dark box, top left, as a camera's overlay."""
    height, width = picture.shape[:2]
    box_w, box_h = round(width * CLOCK_AREA[0]), max(7, round(height * CLOCK_AREA[1]))
    picture[:box_h, :box_w] = 16
    text = f"{second // 60 % 60:02d}{second % 60:02d}"
    slot = box_w // 5  # four digits and the colon
    stroke = max(1, box_h // 8)
    top, bottom, middle = 1, box_h - 1 - stroke, (box_h - stroke) // 2
    for k, digit in enumerate(text):
        left = (k + (k >= 2)) * slot + 1
        right = left + slot - 2 - stroke
        spans = {
            "a": (top, top + stroke, left, right + stroke),
            "d": (bottom, bottom + stroke, left, right + stroke),
            "g": (middle, middle + stroke, left, right + stroke),
            "f": (top, middle + stroke, left, left + stroke),
            "e": (middle, bottom + stroke, left, left + stroke),
            "b": (top, middle + stroke, right, right + stroke),
            "c": (middle, bottom + stroke, right, right + stroke),
        }
        for segment in _DIGITS[int(digit)]:
            y0, y1, x0, x1 = spans[segment]
            picture[y0:y1, x0:x1] = 235
    colon = 2 * slot + slot // 2
    for y in (box_h // 3, 2 * box_h // 3):
        picture[y : y + stroke, colon : colon + stroke] = 235


def generate_audio(
    seconds: float, sample_rate: int = 16000, sound: Sound = "tone", seed: int = 0, channels: int = 1
) -> np.ndarray:
    """Float32 audio in PyAV's planar layout, (channels, samples), every channel alike.

    A tone holds each pitch of `TONE_PITCHES_HZ` (rotated by `seed`) for 2 s, with a continuous
    phase so the changes do not click; noise is white; silence is zeros.
    """
    n = round(seconds * sample_rate)
    if sound == "tone":
        stretch = np.arange(n) // round(TONE_STRETCH_S * sample_rate)
        pitch = np.asarray(TONE_PITCHES_HZ)[(stretch + seed) % len(TONE_PITCHES_HZ)]
        mono = AMPLITUDE * np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate)
    elif sound == "noise":
        mono = np.clip(np.random.default_rng(seed).normal(0, AMPLITUDE / 3, n), -1, 1)
    else:
        mono = np.zeros(n)
    return np.repeat(mono.astype(np.float32)[None], channels, axis=0)


def write_clip(
    path: str | Path,
    seconds: float,
    width: int = 160,
    height: int = 120,
    fps: float = 15,
    motion: Motion = "static",
    audio: Sound | Literal["none"] = "tone",
    seed: int = 0,
    video: bool = True,
    sample_rate: int = 16000,
    channels: int = 1,
    noise: float = 0.0,
    event_at: float | None = None,
    keyframe_s: float | None = None,
) -> Path:
    """An H.264 (or MPEG-4) + AAC clip; the container follows the suffix (.mp4, .mkv, …).

    MP4s are written with `movflags=faststart` (index first), as streamed files are, so a
    truncated one still opens and fails where its data ends. `keyframe_s`: a keyframe every so
    many seconds, as cameras send them (their quality pulses with it); None: the encoder's choice.
    `noise` and `event_at` as in `generate_frames`.
    """
    if not video and audio == "none":
        raise ValueError("a clip needs video, audio or both")
    path = Path(path)
    options = {"movflags": "faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    with av.open(str(path), "w", options=options) as container:
        tracks = []
        if video:
            codec = video_codec()
            encoder_options = {"preset": "veryfast", "crf": "26"} if codec == "libx264" else {}
            if keyframe_s is not None:
                encoder_options["g"] = str(max(1, round(keyframe_s * fps)))
            frames = generate_frames(seconds, width, height, fps, motion, seed, noise, event_at)
            tracks.append(_video_track(container, codec, fps, width, height, frames, encoder_options))
        if audio != "none":
            samples = generate_audio(seconds, sample_rate, audio, seed, channels)
            tracks.append(_audio_track(container, "aac", sample_rate, samples))
        _mux(container, tracks)
    return path


def write_y4m(
    path: str | Path,
    seconds: float,
    width: int = 320,
    height: int = 240,
    fps: float = 15,
    motion: Motion = "moving",
    seed: int = 0,
) -> Path:
    """A raw YUV4MPEG2 (4:2:0) clip, the format of Chromium's fake webcam."""
    path = Path(path)
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        frames = generate_frames(seconds, width, height, fps, motion, seed)
        _mux(container, [_video_track(container, "rawvideo", fps, width, height, frames, {})])
    return path


def write_wav(
    path: str | Path,
    seconds: float,
    sample_rate: int = 48000,
    sound: Sound = "tone",
    seed: int = 0,
    channels: int = 1,
) -> Path:
    """A 16-bit PCM WAV, the format of Chromium's fake microphone."""
    path = Path(path)
    with av.open(str(path), "w", format="wav") as container:
        samples = generate_audio(seconds, sample_rate, sound, seed, channels)
        _mux(container, [_audio_track(container, "pcm_s16le", sample_rate, samples)])
    return path


# A track to mux: its stream, and its frames with their times in seconds.
_Track = tuple[Stream, Iterator[tuple[float, Stream, av.VideoFrame | av.AudioFrame]]]


def _video_track(
    container: OutputContainer,
    codec: str,
    fps: float,
    width: int,
    height: int,
    frames: Iterable[np.ndarray],
    options: dict[str, str],
) -> _Track:
    rate = Fraction(fps).limit_denominator(1001)
    stream = container.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"

    def timed() -> Iterator[tuple[float, Stream, av.VideoFrame]]:
        for i, picture in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, 1 / rate
            yield float(i / rate), stream, frame

    return stream, timed()


def _audio_track(container: OutputContainer, codec: str, sample_rate: int, samples: np.ndarray) -> _Track:
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    stream = container.add_stream(codec, rate=sample_rate, layout=layout)

    def timed() -> Iterator[tuple[float, Stream, av.AudioFrame]]:
        for start in range(0, samples.shape[1], AUDIO_BLOCK):
            block = np.ascontiguousarray(samples[:, start : start + AUDIO_BLOCK])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
            yield start / sample_rate, stream, frame

    return stream, timed()


def _mux(container: OutputContainer, tracks: list[_Track]) -> None:
    """Encode every track's frames in time order, so the file interleaves them as a camera would."""
    for _, stream, frame in heapq.merge(*(frames for _, frames in tracks), key=lambda item: item[0]):
        container.mux(stream.encode(frame))
    for stream, _ in tracks:
        container.mux(stream.encode(None))


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    """A gradient under a fine checker, with coloured rectangles and discs placed by `seed`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack(
        [
            40 + 160 * x / max(1, width - 1),
            40 + 160 * y / max(1, height - 1),
            120 + 40 * ((x // 8 + y // 8) % 2),
        ],
        axis=-1,
    )
    for _ in range(max(3, width // 40)):
        colour = rng.integers(0, 256, 3)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(4, max(5, height / 4), 2)
        if rng.random() < 0.5:
            image[(abs(x - cx) < rx) & (abs(y - cy) < ry)] = colour
        else:
            image[(x - cx) ** 2 + (y - cy) ** 2 < rx**2] = colour
    return image.astype(np.uint8)


def _bounce(position: float, span: int) -> int:
    """A triangle wave: `position` in spans, folded back and forth over 0..span."""
    phase = position % 2
    return round((phase if phase <= 1 else 2 - phase) * span)
