"""Section `prefilter`: the pixel pre-filter's calibration on what fixed cameras send, and the
vision-encoder time it saves.

Each case is a generated 640x360 camera clip (`CAMERA`: σ=3 sensor noise, H.264 with a keyframe
every 2 s) streamed through the configured method's pipeline with the pre-filter on: a static
scene, slow exposure drift, a clock overlay, an object of 2% of the frame entering (and staying)
at a known time, a slow pan, and an IR night-mode switch at a known time. Per case: the share of
chunks after the first whose vision encoder was skipped, the pre-filter's reasons, and for the
cases with an event whether the chunk it falls in kept its video.

Then the static clip twice at Qwen2.5-Omni's real per-frame pixel bounds, the pre-filter on and
off, in the same run: the vision encoder's summed time, and the whole chunk's, as ratios.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from streamguard.backbones import Backbone, load_backbone
from streamguard.bench.workload import Clip, Tick, configured_method, load_clip
from streamguard.config import ModelSettings, Settings
from streamguard.engine.pipeline import STAGES, ChunkReport, create_pipeline
from streamguard.ingest.synthetic import Motion, write_clip

CAMERA: dict[str, Any] = {"width": 640, "height": 360, "fps": 10, "noise": 3.0, "keyframe_s": 2.0}
CASES: tuple[Motion, ...] = ("static", "drift", "clock", "enter", "pan", "ir")
EVENT_CASES: tuple[Motion, ...] = ("enter", "ir")
# Qwen2.5-Omni's own per-frame bounds (the model settings' defaults): a 640x360 frame stays
# 644x364, 598 video tokens a chunk.
REAL_PIXELS = (ModelSettings().min_pixels, ModelSettings().max_pixels)


def event_time(seconds: float, chunk_seconds: float) -> float:
    """The events' time: 0.6 s into the chunk half way through the clip."""
    return (seconds // (2 * chunk_seconds)) * chunk_seconds + 0.6


def camera_clips(folder: Path, seconds: float, settings: Settings) -> list[Clip]:
    """One clip per case, written to `folder` and decoded into chunks."""
    folder.mkdir(parents=True, exist_ok=True)
    event_at = event_time(seconds, settings.chunk.seconds)
    return [
        load_clip(
            case,
            write_clip(folder / f"camera-{case}.mp4", seconds, motion=case, event_at=event_at, **CAMERA),
            settings.chunk,
        )
        for case in CASES
    ]


def steps(clips: list[Clip]) -> int:
    static = next(c for c in clips if c.name == "static")
    return sum(len(c.chunks) for c in clips) + 2 * len(static.chunks)


def measure_prefilter(
    backbone: Backbone, settings: Settings, clips: list[Clip], tick: Tick
) -> dict[str, Any]:
    """Every case's skip share and event verdict, then the encoder time saved at real pixel bounds."""
    method = configured_method(settings)
    streamed = _with_prefilter(method.settings(settings), True)
    seconds = len(clips[0].chunks) * settings.chunk.seconds
    event_chunk = int(event_time(seconds, settings.chunk.seconds) // settings.chunk.seconds)
    cases = {}
    for clip in clips:
        reports = _replay(backbone, streamed, clip, tick)
        cases[clip.name] = _case_figure(reports, event_chunk if clip.name in EVENT_CASES else None)
    static = next(c for c in clips if c.name == "static")
    real = _at_real_pixels(backbone, settings)
    on = _replay(real, _with_prefilter(streamed, True), static, tick)
    off = _replay(real, _with_prefilter(streamed, False), static, tick)
    return {
        "method": method.name,
        "camera": CAMERA,
        "event_at_s": event_time(seconds, settings.chunk.seconds),
        "cases": cases,
        "encoder_time": _encoder_time(on, off),
    }


def _case_figure(reports: list[ChunkReport], event_chunk: int | None) -> dict[str, Any]:
    after_first = reports[1:]
    skipped = sum(r.encoder_skipped for r in after_first)
    event = None if event_chunk is None else reports[event_chunk]
    return {
        "chunks": len(reports),
        "encoder_skipped": skipped,
        "encoder_skipped_pct": 100 * skipped / len(after_first) if after_first else 0.0,
        "video_dropped": sum(r.video_dropped for r in reports),
        "reasons": dict(Counter(r.prefilter for r in reports)),
        "event_chunk": event_chunk,
        "event_kept": None if event is None else not event.video_dropped,
        "event_reason": None if event is None else event.prefilter,
    }


def _encoder_time(on: list[ChunkReport], off: list[ChunkReport]) -> dict[str, Any]:
    def total_ms(reports: list[ChunkReport], stages: tuple[str, ...]) -> float:
        return sum(r.timings_ms.get(stage, 0.0) for r in reports for stage in stages)

    vision_on, vision_off = total_ms(on, ("vision_encode",)), total_ms(off, ("vision_encode",))
    chunk_on, chunk_off = total_ms(on, STAGES), total_ms(off, STAGES)
    return {
        "pixels": {"min": REAL_PIXELS[0], "max": REAL_PIXELS[1]},
        "chunks": len(on),
        "video_tokens_per_chunk": off[0].video_tokens_in,
        "encoder_skipped": sum(r.encoder_skipped for r in on),
        "vision_encode_ms": {"prefilter_on": vision_on, "prefilter_off": vision_off},
        "vision_encode_ratio": vision_on / vision_off if vision_off else None,
        "chunk_ms": {"prefilter_on": chunk_on, "prefilter_off": chunk_off},
        "chunk_ratio": chunk_on / chunk_off if chunk_off else None,
        "prefilter_ms_per_chunk": total_ms(on, ("prefilter",)) / len(on) if on else 0.0,
    }


def _replay(backbone: Backbone, settings: Settings, clip: Clip, tick: Tick) -> list[ChunkReport]:
    pipeline = create_pipeline(backbone, settings, profile=True)
    reports = []
    for chunk in clip.chunks:
        reports.append(pipeline.process(chunk))
        tick()
    return reports


def _with_prefilter(settings: Settings, enabled: bool) -> Settings:
    prefilter = settings.pruning.prefilter.model_copy(update={"enabled": enabled})
    pruning = settings.pruning.model_copy(update={"prefilter": prefilter})
    return settings.model_copy(update={"pruning": pruning})


def _at_real_pixels(backbone: Backbone, settings: Settings) -> Backbone:
    """The loaded backbone when it already runs at the real bounds, else the same checkpoint
    loaded again with them (the tiny config's bounds are far smaller)."""
    if (settings.model.min_pixels, settings.model.max_pixels) == REAL_PIXELS:
        return backbone
    model = settings.model.model_copy(update={"min_pixels": REAL_PIXELS[0], "max_pixels": REAL_PIXELS[1]})
    return load_backbone(model, settings.chunk)
