"""Figure 6: N streams at once through the real scheduler, the serial engine beside the batched one.

Each stream replays the source's chunks, paced as a camera delivers them (chunk k arrives (k+1)
chunk lengths after the stream starts; `speed` > 1 replays faster than real time), with the
streams' starts spread over one chunk period as independent cameras are. Every stream asks a
question every `QUESTION_EVERY_S` seconds of its stream (answers of up to `QUESTION_TOKENS`
tokens), answered while the others keep streaming. Both engines (`engine.batching` false and
true) run the same workload in the same run.

Measured per engine and N: the worker's load (the seconds it worked, on chunks AND answers, per
second of stream: < 1 keeps up), its time per chunk, chunks shed, chunk lag (arrival to
processed), question latency, the CPU share of the worker thread and of the preprocessing pool
(on a small CPU, preprocessing 720p can saturate the cores before the worker does), and with
`engine.profile_stages` each stage's mean ms a chunk (`stages_ms`). A run keeps real time when
nothing is shed, the load is under 1 and the lag p95 stays within `LAG_BOUND_PERIODS` chunk periods.

Past the listed counts N doubles, up to `search_up_to`, until a run falls behind real time, so
each engine's figure names the largest N this machine was measured to keep real time (to within
a factor of two), not an extrapolation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from streamguard.backbones.base import Backbone
from streamguard.bench.workload import Tick, distribution_ms, percentile
from streamguard.config import Settings
from streamguard.engine.pipeline import create_pipeline
from streamguard.engine.scheduler import Answer, ChunkOutcome, Scheduler, SchedulerStats
from streamguard.ingest.chunker import AVChunk

QUESTION = "What is happening right now?"
QUESTION_TOKENS = 64
QUESTION_EVERY_S = 10.0
LAG_BOUND_PERIODS = 2.0  # a real-time chunk is processed within two chunk periods of arriving
ENGINES = {"serial": False, "batched": True}


@dataclass
class StreamRecorder:
    """A `StreamListener` that notes when each chunk arrived and what became of it."""

    expected: int
    tick: Tick
    arrived: dict[int, float] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)
    worker_seconds: list[float] = field(default_factory=list)
    stages_ms: list[dict[str, float]] = field(default_factory=list)  # with engine.profile_stages
    shed: int = 0
    failed: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def chunk_processed(self, outcome: ChunkOutcome) -> None:
        self.lags.append(time.perf_counter() - self.arrived[outcome.report.index])
        self.worker_seconds.append(outcome.seconds)
        self.stages_ms.append(outcome.report.timings_ms)
        self._count()

    def chunk_failed(self, index: int, error: Exception) -> None:
        self.failed += 1
        self._count()

    def chunk_shed(self, chunk: AVChunk) -> None:
        self.shed += 1
        self._count()

    def _count(self) -> None:
        self.tick()
        if len(self.lags) + self.shed + self.failed >= self.expected:
            self.settled.set()


def concurrency_settings(settings: Settings) -> Settings:
    """The config with room for the bench's answers (`QUESTION_TOKENS`)."""
    session = settings.session.model_copy(
        update={"max_new_tokens": max(QUESTION_TOKENS, settings.session.max_new_tokens)}
    )
    return settings.model_copy(update={"session": session})


def measure_concurrency(
    backbone: Backbone,
    settings: Settings,
    chunks: Sequence[AVChunk],
    stream_counts: Sequence[int],
    speed: float,
    tick: Tick,
    search_up_to: int = 0,
) -> dict[str, Any]:
    settings = concurrency_settings(settings)
    engines = {}
    for name, batching in ENGINES.items():
        engine = settings.engine.model_copy(update={"batching": batching})
        at = settings.model_copy(update={"engine": engine})
        run = partial(_run_in_loop, backbone, at, chunks, speed=speed, tick=tick)
        engines[name] = _search(run, stream_counts, search_up_to)
    return {
        "speed": speed,
        "chunks_per_stream": len(chunks),
        "max_pending_chunks": settings.service.max_pending_chunks,
        "question": {"text": QUESTION, "max_tokens": QUESTION_TOKENS, "every_s": QUESTION_EVERY_S},
        "lag_bound_s": LAG_BOUND_PERIODS * settings.chunk.seconds,
        "engine": settings.engine.model_dump(exclude={"batching"}),
        "engines": engines,
    }


def engine_summary(concurrency: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """bench.json's `engine`: per engine, the most streams it kept real time, and its figures at
    one N for both: the most streams both engines ran (answers under load: the serial engine's
    first N that fell behind, unless it kept up with every N it ran)."""
    engines = concurrency["engines"].values()
    at = min(max(r["streams"] for r in figure["rows"]) for figure in engines)
    summary = {}
    for name, figure in concurrency["engines"].items():
        row = next(r for r in figure["rows"] if r["streams"] == at)
        summary[name] = {
            "streams_real_time": figure["largest_measured_realtime_streams"],
            "at_streams": at,
            "worker_ms_per_chunk": row["worker_ms_per_chunk"],
            "load": row["load"],
            "lag_p95_s": _seconds(row["lag"]["p95_ms"]),
            "first_delta_p95_s": _seconds(row["question_first_delta"]["p95_ms"]),
            "answer_total_p95_s": _seconds(row["question_total"]["p95_ms"]),
            "cpu_share": row["cpu_share"],
            "gpu_busy_share": row["gpu_busy_share"],
        }
    return summary


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _search(
    run: Callable[[int], dict[str, Any]], stream_counts: Sequence[int], search_up_to: int
) -> dict[str, Any]:
    """`run(n)` at each listed count, then doubling n while it keeps real time."""
    rows = [run(n) for n in stream_counts]
    while rows[-1]["realtime"] and 2 * rows[-1]["streams"] <= search_up_to:
        rows.append(run(2 * rows[-1]["streams"]))
    behind = [r["streams"] for r in rows if not r["realtime"]]
    return {
        "rows": rows,
        "searched_up_to": search_up_to if search_up_to > max(stream_counts) else None,
        "largest_measured_realtime_streams": max((r["streams"] for r in rows if r["realtime"]), default=0),
        "smallest_measured_behind_streams": min(behind, default=None),
    }


def _run_in_loop(
    backbone: Backbone, settings: Settings, chunks: Sequence[AVChunk], count: int, speed: float, tick: Tick
) -> dict[str, Any]:
    return asyncio.run(_run_streams(backbone, settings, chunks, count, speed, tick))


async def _run_streams(
    backbone: Backbone, settings: Settings, chunks: Sequence[AVChunk], count: int, speed: float, tick: Tick
) -> dict[str, Any]:
    service = settings.service
    scheduler = Scheduler(service.max_pending_chunks, chunk_delay_s=0.0, engine=settings.engine)
    scheduler.start()
    recorders = []
    try:
        for i in range(count):
            pipeline = await scheduler.call(create_pipeline, backbone, settings)
            recorder = StreamRecorder(len(chunks), tick)
            scheduler.register(f"bench-{i}", pipeline, recorder)
            recorders.append(recorder)
        period = settings.chunk.seconds / speed
        every = max(1, round(QUESTION_EVERY_S / settings.chunk.seconds))
        asks = {k for k in range(len(chunks)) if k % every == every // 2}
        before, cpu_before = scheduler.stats(), time.process_time()
        started = time.perf_counter()
        feeds = [
            _feed(scheduler, f"bench-{i}", recorder, chunks, started + i * period / count, period, asks)
            for i, recorder in enumerate(recorders)
        ]
        async with _gpu_busy(backbone) as gpu:
            answers = [a for stream in await asyncio.gather(*feeds) for a in stream]
            # Bounded: every chunk is processed, shed or failed long before this on any working model.
            await asyncio.wait_for(asyncio.gather(*(r.settled.wait() for r in recorders)), timeout=600)
        wall = time.perf_counter() - started
        work = _worked(before, scheduler.stats(), time.process_time() - cpu_before, wall)
    finally:
        await scheduler.stop()
    return _row(count, speed, period, len(chunks), recorders, answers, wall, work, gpu)


async def _feed(
    scheduler: Scheduler,
    stream_id: str,
    recorder: StreamRecorder,
    chunks: Sequence[AVChunk],
    start: float,
    period: float,
    asks: set[int],
) -> list[Answer]:
    """Submit the chunks at their arrival times, asking after the chunks in `asks`; return the
    answers once all are done."""
    questions: list[asyncio.Task[Answer]] = []
    for k, chunk in enumerate(chunks):
        await asyncio.sleep(max(0.0, start + (k + 1) * period - time.perf_counter()))
        recorder.arrived[chunk.index] = time.perf_counter()
        scheduler.submit_chunk(stream_id, chunk)
        if k in asks:
            questions.append(asyncio.create_task(_ask(scheduler, stream_id)))
    return list(await asyncio.gather(*questions))


async def _ask(scheduler: Scheduler, stream_id: str) -> Answer:
    answer = scheduler.ask(stream_id, QUESTION, QUESTION_TOKENS)
    async for _ in answer:
        pass
    return answer


def _worked(
    before: SchedulerStats, after: SchedulerStats, process_cpu_s: float, wall: float
) -> dict[str, float]:
    """The worker's busy seconds in the run, and each part's share of the machine's CPU."""
    capacity = wall * (os.cpu_count() or 1)
    return {
        "busy_s": after.busy_s - before.busy_s,
        "cpu_share": {
            "worker": (after.worker_cpu_s - before.worker_cpu_s) / capacity,
            "preprocessing": (after.preprocess_cpu_s - before.preprocess_cpu_s) / capacity,
            "whole_process": process_cpu_s / capacity,
            # other processes on the machine count too: the 1-minute load average per CPU
            "machine_load": os.getloadavg()[0] / (os.cpu_count() or 1),
        },
    }


@contextlib.asynccontextmanager
async def _gpu_busy(backbone: Backbone):
    """On CUDA, the share of time the GPU was busy during the block (NVML samples every 0.25 s);
    a list that holds it afterwards, empty elsewhere or without NVML."""
    samples: list[float] = []
    result: list[float] = []
    task = None
    if backbone.device.type == "cuda":

        async def sample() -> None:
            with contextlib.suppress(Exception):  # no NVML (pynvml): no figure
                while True:
                    samples.append(torch.cuda.utilization(backbone.device) / 100)
                    await asyncio.sleep(0.25)

        task = asyncio.create_task(sample())
    try:
        yield result
    finally:
        if task is not None:
            task.cancel()
        if samples:
            result.append(statistics.fmean(samples))


def _row(
    count: int,
    speed: float,
    period: float,
    chunks: int,
    recorders: list[StreamRecorder],
    answers: list[Answer],
    wall: float,
    work: dict[str, Any],
    gpu: list[float],
) -> dict[str, Any]:
    processed = sum(len(r.lags) for r in recorders)
    shed = sum(r.shed for r in recorders)
    chunk_seconds = [s for r in recorders for s in r.worker_seconds]
    span = chunks * period
    load = work["busy_s"] / span
    lags = [lag for r in recorders for lag in r.lags]
    lag_p95 = percentile(lags, 95)
    results = [a.result for a in answers if a.result is not None]
    first = [r.time_to_first_delta_s for r in results if r.time_to_first_delta_s is not None]
    return {
        "streams": count,
        "chunks_submitted": count * chunks,
        "chunks_processed": processed,
        "chunks_shed": shed,
        "chunks_failed": sum(r.failed for r in recorders),
        "shed_rate": shed / (count * chunks),
        "worker_ms_per_chunk": 1000 * statistics.fmean(chunk_seconds) if chunk_seconds else None,
        "worker_busy_s": work["busy_s"],
        "load": load,
        "realtime": shed == 0
        and load < 1.0
        and lag_p95 is not None
        and lag_p95 <= LAG_BOUND_PERIODS * period,
        "wall_s": wall,
        "arrival_span_s": span,
        "lag": distribution_ms(lags),
        "questions_asked": len(answers),
        "answer_tokens_mean": statistics.fmean([r.generated_tokens for r in results]) if results else None,
        "question_first_delta": distribution_ms(first),
        "question_total": distribution_ms([r.total_s for r in results]),
        "cpu_share": work["cpu_share"],
        "gpu_busy_share": gpu[0] if gpu else None,
        "stages_ms": _stage_means([t for r in recorders for t in r.stages_ms]),
    }


def _stage_means(timings: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's mean ms a chunk (a stage a chunk skipped counts 0); empty unless the engine
    profiles stages (`engine.profile_stages`). The batched engine's encoders are shared out per
    chunk and its preprocessing ran in the pool, off the worker."""
    stages = sorted({stage for t in timings for stage in t})
    return {stage: statistics.fmean(t.get(stage, 0.0) for t in timings) for stage in stages}
