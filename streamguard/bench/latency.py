"""Figure 4: a question after 1, 2, 5, 10 minutes of stream, answered from the rolling session
versus re-prefilling the whole context offline, as a user without a streaming cache would.

One long replay per method runs as fast as it goes through the real pipeline (encoders, pruner,
rolling session), looping a short clip. At each checkpoint the rolling session answers the
question, then the baseline builds a fresh session holding every token the stream kept so far
(no budget, no eviction), prefilled from scratch, and answers the same question. The baseline's
features are each distinct chunk's, encoded once outside its timing (the features the stream
computed), so it is charged for prefill and generation only. The memory (figure 5) and per-chunk
cost (figure 2) sections replay the same stream without questions, so that the baseline's
allocations stay out of the process's RSS.

Each answer is timed several times and the ratio taken of the best times: on a machine shared
with other work the fastest run is the one least disturbed (medians are kept too). The same replay feeds the memory
(figure 5) and per-chunk cost (figure 2) sections.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import torch

from streamguard.backbones.base import Backbone, EncodedChunk
from streamguard.bench.memory import MemorySample, sample_memory
from streamguard.bench.workload import Method, Tick, looped
from streamguard.config import Settings
from streamguard.engine.pipeline import ChunkReport, create_pipeline
from streamguard.engine.session import Recall, SamplingParams, SessionStats, StreamSession
from streamguard.ingest.chunker import AVChunk

QUESTION = "What has happened in the stream so far?"


@dataclass
class KeptChunk:
    """What the stream kept of one chunk: which distinct source chunk, its kept video, or none."""

    source: int
    # Plain ints: hundreds of small long-lived tensors between the cache's large transient ones
    # fragment the heap, and the process's RSS would grow with them.
    keep: list[int]
    video_dropped: bool


@dataclass
class AnswerTiming:
    time_to_first_delta_s: float | None
    total_s: float
    generated_tokens: int
    context_tokens: int
    text: str


@dataclass
class LongStream:
    method: str
    reports: list[ChunkReport] = field(default_factory=list)
    stats: SessionStats = field(default_factory=SessionStats)  # the session's counters at the end
    prefix_tokens: int = 0
    memory: list[MemorySample] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpoints:
    """When to ask, and how often to time each answer: `rounds` times the rolling session answers
    `reps` times, then the re-prefill baseline once."""

    at: dict[int, float]  # {chunks streamed: minutes}
    rounds: int
    reps: int

    @classmethod
    def at_minutes(
        cls, minutes: Sequence[float], seconds_per_chunk: float, rounds: int, reps: int
    ) -> Checkpoints:
        return cls({max(1, round(m * 60 / seconds_per_chunk)): m for m in minutes}, rounds, reps)


def run_long_stream(
    backbone: Backbone,
    settings: Settings,
    method: Method,
    source: Sequence[AVChunk],
    chunks: int,
    tick: Tick,
    checkpoints: Checkpoints | None = None,
) -> LongStream:
    """Replay `source` in a loop for `chunks` chunks, sampling memory after each, asking at every
    checkpoint (none: a replay for the memory and cost figures alone)."""
    seconds = settings.chunk.seconds
    method_settings = method.settings(settings)
    pipeline = create_pipeline(backbone, method_settings, profile=True)
    params = SamplingParams(max_new_tokens=settings.session.max_new_tokens)
    features: dict[int, EncodedChunk] = {}
    kept: list[KeptChunk] = []
    result = LongStream(method.name)
    for chunk in looped(source, chunks, seconds):
        report = pipeline.process(chunk)
        result.reports.append(report)
        if report.previous_video_evicted:
            kept[-1].video_dropped = True
        kept_indices = sorted(set(report.semantic) | set(report.spatial))
        kept.append(KeptChunk(chunk.index % len(source), kept_indices, report.video_dropped))
        result.memory.append(sample_memory(chunk.start + seconds, pipeline.session))
        tick()
        streamed = chunk.index + 1
        if checkpoints is None or streamed not in checkpoints.at:
            continue
        for index in {k.source for k in kept} - features.keys():
            features[index] = backbone.encode(backbone.preprocess(source[index].frames, source[index].audio))
        rolling, baseline = _race(
            pipeline.session, method_settings, features, kept, params, checkpoints.rounds, checkpoints.reps
        )
        result.checkpoints.append(checkpoint_row(checkpoints.at[streamed], streamed, rolling, baseline))
        tick()
    result.stats = dataclasses.replace(pipeline.session.stats)
    result.prefix_tokens = pipeline.session.prefix_length
    return result


def _race(
    session: StreamSession,
    settings: Settings,
    features: dict[int, EncodedChunk],
    kept: Sequence[KeptChunk],
    params: SamplingParams,
    rounds: int,
    reps: int,
) -> tuple[list[AnswerTiming], list[AnswerTiming | None]]:
    """The rolling session's answers and the baseline's, interleaved so that a burst of other load
    on the machine hits both sides alike."""
    rolling: list[AnswerTiming] = []
    baseline: list[AnswerTiming | None] = []
    for _ in range(rounds):
        rolling += [timed_answer(session, QUESTION, params, time.perf_counter()) for _ in range(reps)]
        baseline.append(reprefill_answer(session.backbone, settings, features, kept, params))
    return rolling, baseline


def timed_answer(
    session: StreamSession,
    question: str,
    params: SamplingParams,
    started: float,
    recall: Recall | None = None,
) -> AnswerTiming:
    """Answer `question` from `session` (over what `recall` loads, if any), timed from `started`
    to the first text delta and to the end."""
    first: float | None = None
    parts = []
    for delta in session.ask(question, params, recall):
        if first is None:
            first = time.perf_counter()
        parts.append(delta)
    ended = time.perf_counter()
    stats = session.stats.last_answer
    return AnswerTiming(
        time_to_first_delta_s=None if first is None else first - started,
        total_s=ended - started,
        generated_tokens=stats.generated_tokens,
        context_tokens=stats.context_tokens,
        text="".join(parts),
    )


def reprefill_answer(
    backbone: Backbone,
    settings: Settings,
    features: dict[int, EncodedChunk],
    kept: Sequence[KeptChunk],
    params: SamplingParams,
) -> AnswerTiming | None:
    """The baseline: a fresh session prefilled with every kept token (prompt included), then the
    question; None when the whole context does not fit the model's position range."""
    tokens = sum(features[k.source].audio.shape[0] + (0 if k.video_dropped else len(k.keep)) for k in kept)
    unbounded = settings.session.model_copy(update={"token_budget": max(1, tokens)})
    started = time.perf_counter()
    session = StreamSession(backbone, unbounded, settings.model.system_prompt)
    try:
        for k in kept:
            keep = torch.tensor(k.keep, dtype=torch.long)
            session.append_chunk(features[k.source], keep=keep, drop_video=k.video_dropped)
    except RuntimeError:  # positions past the model's range: an offline prompt this long cannot exist
        return None
    return timed_answer(session, QUESTION, params, started)


def checkpoint_row(
    minutes: float, chunks: int, rolling: list[AnswerTiming], baseline: list[AnswerTiming | None]
) -> dict[str, Any]:
    row: dict[str, Any] = {"minutes": minutes, "chunks": chunks, "rolling": _timing_summary(rolling)}
    measured = [b for b in baseline if b is not None]
    row["reprefill"] = _timing_summary(measured) if measured else None
    if measured:
        rolling_s, baseline_s = row["rolling"], row["reprefill"]
        row["total_ratio"] = baseline_s["total_ms"] / rolling_s["total_ms"]
        row["total_ratio_of_medians"] = baseline_s["total_ms_median"] / rolling_s["total_ms_median"]
        first_rolling, first_baseline = rolling_s["first_delta_ms"], baseline_s["first_delta_ms"]
        row["first_delta_ratio"] = (
            first_baseline / first_rolling if first_rolling and first_baseline is not None else None
        )
        # Below the rolling budget both hold the same tokens, so greedy answers must agree.
        row["same_answer"] = rolling[0].text == measured[0].text
    return row


def _timing_summary(timings: list[AnswerTiming]) -> dict[str, Any]:
    """Best (minimum) times, the medians next to them."""
    firsts = [t.time_to_first_delta_s for t in timings if t.time_to_first_delta_s is not None]
    totals = [t.total_s for t in timings]
    return {
        "first_delta_ms": 1000 * min(firsts) if firsts else None,
        "total_ms": 1000 * min(totals),
        "first_delta_ms_median": 1000 * median(firsts) if firsts else None,
        "total_ms_median": 1000 * median(totals),
        "generated_tokens": timings[0].generated_tokens,
        "context_tokens": timings[0].context_tokens,
        "reps": len(timings),
    }
