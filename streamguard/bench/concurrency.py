"""Figure 6: N streams at once through the real scheduler (its one worker, its backpressure).

Each stream replays the clip's chunks, paced as a camera delivers them (chunk k arrives (k+1)
chunk lengths after the stream starts; `speed` > 1 replays faster than real time), with the
streams' starts spread over one chunk period as independent cameras are. Halfway through, every
stream is asked a question, answered while the others keep streaming. Measured per N: worker
seconds per stream-second (the real-time factor), the worker's load (N · RTF · speed, < 1 keeps
up), chunks shed by backpressure, chunk lag (arrival to processed) and question latency.

Past the listed counts N doubles, up to `search_up_to`, until a run falls behind real time, so
the figure names the largest N this machine was measured to keep real time (to within a factor
of two), not an extrapolation.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamguard.backbones.base import Backbone
from streamguard.bench.workload import Tick, distribution_ms
from streamguard.config import Settings
from streamguard.engine.pipeline import create_pipeline
from streamguard.engine.scheduler import Answer, ChunkOutcome, Scheduler
from streamguard.ingest.chunker import AVChunk

QUESTION = "What is happening right now?"


@dataclass
class StreamRecorder:
    """A `StreamListener` that notes when each chunk arrived and what became of it."""

    expected: int
    tick: Tick
    arrived: dict[int, float] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)
    worker_seconds: list[float] = field(default_factory=list)
    shed: int = 0
    failed: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def chunk_processed(self, outcome: ChunkOutcome) -> None:
        self.lags.append(time.perf_counter() - self.arrived[outcome.report.index])
        self.worker_seconds.append(outcome.seconds)
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


def measure_concurrency(
    backbone: Backbone,
    settings: Settings,
    chunks: Sequence[AVChunk],
    stream_counts: Sequence[int],
    speed: float,
    tick: Tick,
    search_up_to: int = 0,
) -> dict[str, Any]:
    rows = [asyncio.run(_run_streams(backbone, settings, chunks, n, speed, tick)) for n in stream_counts]
    while rows[-1]["realtime"] and 2 * rows[-1]["streams"] <= search_up_to:
        rows.append(
            asyncio.run(_run_streams(backbone, settings, chunks, 2 * rows[-1]["streams"], speed, tick))
        )
    largest = rows[-1]
    behind = [r["streams"] for r in rows if not r["realtime"]]
    return {
        "speed": speed,
        "chunks_per_stream": len(chunks),
        "max_pending_chunks": settings.service.max_pending_chunks,
        "rows": rows,
        "searched_up_to": search_up_to if search_up_to > max(stream_counts) else None,
        "largest_measured_realtime_streams": max((r["streams"] for r in rows if r["realtime"]), default=0),
        "smallest_measured_behind_streams": min(behind, default=None),
        # Streams one worker could keep up with at real time, from the largest run's RTF.
        "estimated_realtime_streams": math.floor(1 / largest["rtf"]) if largest["rtf"] else None,
    }


async def _run_streams(
    backbone: Backbone, settings: Settings, chunks: Sequence[AVChunk], count: int, speed: float, tick: Tick
) -> dict[str, Any]:
    scheduler = Scheduler(settings.service.max_pending_chunks, chunk_delay_s=0.0)
    scheduler.start()
    recorders = []
    try:
        for i in range(count):
            pipeline = await scheduler.call(create_pipeline, backbone, settings)
            recorder = StreamRecorder(len(chunks), tick)
            scheduler.register(f"bench-{i}", pipeline, recorder)
            recorders.append(recorder)
        period = settings.chunk.seconds / speed
        started = time.perf_counter()
        feeds = [
            _feed(scheduler, f"bench-{i}", recorder, chunks, started + i * period / count, period)
            for i, recorder in enumerate(recorders)
        ]
        answers = await asyncio.gather(*feeds)
        # Bounded: every chunk is processed, shed or failed long before this on any working model.
        await asyncio.wait_for(asyncio.gather(*(r.settled.wait() for r in recorders)), timeout=600)
        wall = time.perf_counter() - started
    finally:
        await scheduler.stop()
    return _row(count, speed, period, len(chunks), recorders, answers, wall, settings.chunk.seconds)


async def _feed(
    scheduler: Scheduler,
    stream_id: str,
    recorder: StreamRecorder,
    chunks: Sequence[AVChunk],
    start: float,
    period: float,
) -> Answer:
    """Submit the chunks at their arrival times; ask at the halfway chunk; return the answer."""
    question: asyncio.Task[Answer] | None = None
    for k, chunk in enumerate(chunks):
        await asyncio.sleep(max(0.0, start + (k + 1) * period - time.perf_counter()))
        recorder.arrived[chunk.index] = time.perf_counter()
        scheduler.submit_chunk(stream_id, chunk)
        if k == len(chunks) // 2:
            question = asyncio.create_task(_ask(scheduler, stream_id))
    assert question is not None  # a stream has at least one chunk
    return await question


async def _ask(scheduler: Scheduler, stream_id: str) -> Answer:
    answer = scheduler.ask(stream_id, QUESTION)
    async for _ in answer:
        pass
    return answer


def _row(
    count: int,
    speed: float,
    period: float,
    chunks: int,
    recorders: list[StreamRecorder],
    answers: list[Answer],
    wall: float,
    seconds_per_chunk: float,
) -> dict[str, Any]:
    processed = sum(len(r.lags) for r in recorders)
    shed = sum(r.shed for r in recorders)
    worker = sum(sum(r.worker_seconds) for r in recorders)
    rtf = worker / (processed * seconds_per_chunk) if processed else None
    load = count * rtf * speed if rtf is not None else None
    results = [a.result for a in answers if a.result is not None]
    first = [r.time_to_first_delta_s for r in results if r.time_to_first_delta_s is not None]
    return {
        "streams": count,
        "chunks_submitted": count * chunks,
        "chunks_processed": processed,
        "chunks_shed": shed,
        "chunks_failed": sum(r.failed for r in recorders),
        "shed_rate": shed / (count * chunks),
        "rtf": rtf,
        "load": load,
        "realtime": shed == 0 and load is not None and load < 1.0,
        "wall_s": wall,
        "arrival_span_s": chunks * period,
        "lag": distribution_ms([lag for r in recorders for lag in r.lags]),
        "question_first_delta": distribution_ms(first),
        "question_total": distribution_ms([r.total_s for r in results]),
    }
