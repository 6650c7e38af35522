"""Small generated audio-video clips for tests, benchmarks and demos (PyAV encodes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import av
import numpy as np

Motion = Literal["static", "moving", "pan"]
AudioKind = Literal["tone", "noise", "silence", "none"]


def generate_frame(
    index: int, fps: float, width: int, height: int, motion: Motion, seed: int = 0
) -> np.ndarray:
    """A deterministic textured RGB scene: gradient, stripes and two squares."""
    rng = np.random.default_rng(seed)
    world_width = width * 3
    y, x = np.mgrid[0:height, 0:world_width]
    base = np.stack([(x * 255 // world_width), (y * 255 // height), ((x // 16 + y // 16) % 2) * 120 + 60], -1)
    texture = rng.integers(0, 40, (height, world_width, 1))
    world = (base + texture).clip(0, 255).astype(np.uint8)
    t = index / fps
    shift = int(t * 12) % (world_width - width) if motion == "pan" else 0
    frame = world[:, shift : shift + width].copy()
    if motion == "moving":
        for k, color in enumerate(([255, 40, 40], [40, 40, 255])):
            size = height // 4
            cx = int((0.5 + 0.4 * np.sin(2.1 * t + k * 2)) * (width - size))
            cy = int((0.5 + 0.4 * np.cos(1.7 * t + k)) * (height - size))
            frame[cy : cy + size, cx : cx + size] = color
    return frame


def generate_audio(seconds: float, sample_rate: int, kind: AudioKind, seed: int = 0) -> np.ndarray:
    """Mono float32; a tone changes pitch every 2 s so chunks differ by their sound."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    if kind == "tone":
        pitch = 220.0 * 2 ** ((np.floor(t / 2) % 5) / 4)
        return (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
    if kind == "noise":
        return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    return np.zeros(n, np.float32)


def write_clip(
    path: str | Path,
    seconds: float,
    width: int = 160,
    height: int = 120,
    fps: int = 15,
    motion: Motion = "static",
    audio: AudioKind = "tone",
    seed: int = 0,
    video: bool = True,
    sample_rate: int = 16000,
) -> Path:
    """An h264 + AAC clip (mp4 or mkv by suffix)."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        vstream = None
        if video:
            vstream = container.add_stream(
                "libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency"}
            )
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        astream = container.add_stream("aac", rate=sample_rate, layout="mono") if audio != "none" else None
        if vstream is not None:
            for i in range(round(seconds * fps)):
                frame = av.VideoFrame.from_ndarray(
                    generate_frame(i, fps, width, height, motion, seed), format="rgb24"
                )
                frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            samples = generate_audio(seconds, sample_rate, audio, seed)
            step = 1024
            for start in range(0, samples.shape[0], step):
                block = samples[None, start : start + step]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, start
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


def write_y4m(
    path: str | Path,
    seconds: float,
    width: int = 320,
    height: int = 240,
    fps: int = 15,
    motion: Motion = "moving",
) -> Path:
    """A raw YUV4MPEG2 clip, the format Chromium's fake webcam reads."""
    path = Path(path)
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(generate_frame(i, fps, width, height, motion), format="rgb24")
            container.mux(stream.encode(frame.reformat(format="yuv420p")))
        container.mux(stream.encode(None))
    return path


def write_wav(path: str | Path, seconds: float, sample_rate: int = 48000, kind: AudioKind = "tone") -> Path:
    """A 16-bit PCM WAV (Chromium's fake microphone reads one)."""
    path = Path(path)
    samples = (generate_audio(seconds, sample_rate, kind) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
