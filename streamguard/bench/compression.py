"""Figure 1 (with 7, fidelity): every method replays the same clip; tokens pruned, and the
first-token KL of each method's answers against the full-token session's."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from streamguard.backbones.base import Backbone
from streamguard.bench.fidelity import mean_kl
from streamguard.bench.workload import FULL, OFFLINE_METHOD, ONLINE_METHODS, Clip, Method, Tick
from streamguard.config import Settings
from streamguard.engine.pipeline import create_pipeline
from streamguard.engine.replay import append_offline_plan, pruned_pct, summarize_replay
from streamguard.engine.session import StreamSession
from streamguard.pruning.pruner import Pruner
from streamguard.pruning.temporal import offline_contextguard


@dataclass
class MethodRun:
    """A clip replayed under one method: its session (for questions) and what it kept."""

    method: str
    session: StreamSession
    summary: dict[str, float | int]


def steps_per_clip(clip: Clip) -> int:
    """Progress steps `measure_clip` takes: one per chunk per method, offline included."""
    return len(clip.chunks) * (len(ONLINE_METHODS) + 1)


def measure_clip(
    backbone: Backbone, settings: Settings, clip: Clip, questions: list[str], tick: Tick
) -> dict[str, Any]:
    """Compression and fidelity of every method on `clip`: {"compression": {method: summary},
    "fidelity": {method: mean KL}, "offline_skipped": reason or None}."""
    full = online_run(backbone, settings, FULL, clip, tick)
    compression = {FULL.name: full.summary}
    fidelity: dict[str, float] = {}
    for method in ONLINE_METHODS[1:]:
        run = online_run(backbone, settings, method, clip, tick)
        compression[method.name] = run.summary
        fidelity[method.name] = mean_kl(full.session, run.session, questions)
    offline, skipped = offline_run(backbone, settings, clip, tick)
    if offline is not None:
        compression[OFFLINE_METHOD] = offline.summary
        fidelity[OFFLINE_METHOD] = mean_kl(full.session, offline.session, questions)
    return {"compression": compression, "fidelity": fidelity, "offline_skipped": skipped}


def online_run(backbone: Backbone, settings: Settings, method: Method, clip: Clip, tick: Tick) -> MethodRun:
    """The clip through the stream pipeline (encoders, pruner, rolling session) under `method`."""
    pipeline = create_pipeline(backbone, method.settings(settings))
    started = time.perf_counter()
    reports = []
    for chunk in clip.chunks:
        reports.append(pipeline.process(chunk))
        tick()
    summary = summarize_replay(
        reports, pipeline.session, time.perf_counter() - started, settings.chunk.seconds
    )
    return MethodRun(method.name, pipeline.session, summary)


def offline_run(
    backbone: Backbone, settings: Settings, clip: Clip, tick: Tick
) -> tuple[MethodRun | None, str | None]:
    """Offline ContextGuard (§2.3) over the whole clip, laid into a session; (None, why) when the
    clip cannot be planned (a chunk without video, or frames changing size)."""
    encoded = []
    for chunk in clip.chunks:
        encoded.append(backbone.encode(backbone.preprocess(chunk.frames, chunk.audio)))
        tick()
    if any(e.video is None for e in encoded):
        return None, "a chunk has no video"
    if len({tuple(e.video.shape) for e in encoded}) > 1:
        return None, "the video changes size"
    pruning = settings.pruning
    reference = Pruner(pruning, backbone).reference
    plan = offline_contextguard(
        [e.video for e in encoded],
        [e.audio for e in encoded],
        [reference(e.audio) for e in encoded],
        pruning.rho_sem,
        pruning.rho_spa,
        pruning.tau_merge,
        pruning.depth_threshold,
    )
    session = StreamSession(backbone, settings.session, settings.model.system_prompt)
    append_offline_plan(session, encoded, plan)
    stats = session.stats
    video_in, video_kept, audio = stats.video_tokens_in, stats.video_tokens_kept, stats.audio_tokens
    summary: dict[str, float | int] = {
        "chunks": len(encoded),
        "video_tokens_in": video_in,
        "video_tokens_kept": video_kept,
        "input_tokens": video_in + audio,
        "input_tokens_kept": video_kept + audio,
        "video_tokens_pruned_pct": pruned_pct(video_kept, video_in),
        "input_tokens_pruned_pct": pruned_pct(video_kept + audio, video_in + audio),
        "chunks_video_dropped": len(encoded) - len(plan.groups),
        "segments": len(plan.segments),
        "kv_tokens": session.cache_tokens,
        "kv_bytes": session.cache_bytes,
    }
    return MethodRun(OFFLINE_METHOD, session, summary), None
