"""The stream registry: each stream's source task, session, state and stats.

A stream is a source (anything with `async chunks()`: file, RTSP, WebRTC) whose chunks a task
submits to the scheduler, plus its own pipeline (session and pruner) on the process's one
backbone. Stats are updated on the event loop from the scheduler's callbacks.

An ended stream (its source stopped or failed) keeps its cache and answers questions; once no
websocket client has been on it for `service.ended_stream_ttl_s` it is deleted, so a closed
browser tab does not hold GPU memory for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import stat
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from streamguard.backbones.base import Backbone
from streamguard.cluster.store import Counters, Store
from streamguard.config import Settings
from streamguard.engine.pipeline import ChunkPipeline, ChunkReport, create_pipeline
from streamguard.engine.scheduler import (
    Answer,
    AnswerResult,
    ChunkOutcome,
    QueueStats,
    Scheduler,
    TooManyQuestionsError,
    UnknownStreamError,
)
from streamguard.memory.manager import MemoryManager
from streamguard.memory.recall import ChunkRecall
from streamguard.memory.spec import MemoryDisabledError, RecallSpec
from streamguard.memory.stream import StreamMemory
from streamguard.service.auth import check_stream_quota
from streamguard.service.logs import event
from streamguard.service.metrics import ServiceMetrics
from streamguard.service.protocol import (
    ChunkOverlay,
    ChunkTiming,
    CreateStreamRequest,
    ErrorCode,
    FileStreamRequest,
    LatencySummary,
    MemoryStatsBody,
    ModelInfo,
    PruningInfo,
    SamplingInfo,
    ServiceError,
    ServiceStats,
    StreamEnding,
    StreamInfo,
    StreamKind,
    StreamMoved,
    StreamState,
    StreamStatsBody,
    StreamUpdate,
)
from streamguard.vocabulary import (
    ACTIVE_STATES,
    FINAL_STATES,
    MEDIA_TIMEOUT,
    WORKER_DRAINING,
    StreamRecord,
)

if TYPE_CHECKING:
    from streamguard.ingest.chunker import AVChunk


RTF_WINDOW = 20  # chunks in the rolling real-time factor
LATENCY_WINDOW = 200  # answers kept for the latency percentiles
EXPIRY_CHECK_S = 5.0  # how often ended streams are looked at (more often for a shorter TTL)
# Stats that add up over every stream the worker has run, deleted ones included.
COUNTED_STATS = (
    "chunks_received",
    "chunks_processed",
    "chunks_dropped_redundant",
    "chunks_encoder_skipped",
    "chunks_shed",
    "chunks_discarded",
    "tokens_in",
    "tokens_kept",
    "questions_answered",
    "reconnects",
)

# What a stream's memory reports (`StreamMemory.stats`), and what the totals add up over the
# streams held now.
MEMORY_FIGURES = (
    "host_bytes",
    "disk_bytes",
    "chunks_offloaded",
    "chunks_held",
    "chunks_forgotten",
    "recalls",
)
MEMORY_SUMS = ("device_bytes", *MEMORY_FIGURES)


class ChunkSource(Protocol):
    """What every ingest source offers (files, RTSP, WebRTC)."""

    @property
    def chunks_dropped(self) -> int:
        """Chunks the source cut but dropped unread: its consumer fell behind."""
        ...

    def chunks(self) -> AsyncIterator[AVChunk]: ...


@runtime_checkable
class ReconnectingSource(ChunkSource, Protocol):
    """A source that reconnects by itself and reports it (RTSP): `on_state(state, reason)`."""

    on_state: Callable[[Literal["live", "reconnecting"], str | None], None] | None


class LatencyWindow:
    """The latest answers' times to the first delta, summarised as percentiles."""

    def __init__(self, size: int = LATENCY_WINDOW):
        self._seconds: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def summary(self) -> LatencySummary:
        ordered = sorted(self._seconds)
        return LatencySummary(
            count=len(ordered), p50_ms=_percentile_ms(ordered, 0.50), p95_ms=_percentile_ms(ordered, 0.95)
        )


class Stream:
    """One stream's state and stats; the scheduler's listener for its chunks.

    Once `removed` is set (the stream is being deleted) the scheduler's late callbacks (a chunk
    that was prefilling, an answer that was finishing) change nothing, so the stream's metric
    series, once forgotten, stay gone.
    """

    def __init__(
        self,
        kind: StreamKind,
        description: str,
        owner: str,
        source: ChunkSource,
        scheduler: Scheduler,
        metrics: ServiceMetrics,
        chunk: ChunkTiming,
        pipeline: ChunkPipeline,
        model: ModelInfo,
        service_latency: LatencyWindow,
        service_recall_latency: LatencyWindow,
        *,
        reopen_url: str | None = None,
        taken_over: StreamRecord | None = None,
    ):
        """`service_latency` and `service_recall_latency` are the windows of every stream's
        answers and recalls (the service's totals);
        `reopen_url` is what another worker needs to reopen the camera (RTSP); `taken_over` the
        record of a stream a dead worker ran, which this one continues under the same id."""
        self.id = taken_over.id if taken_over else uuid.uuid4().hex
        self.kind = kind
        self.description = description
        self.owner = owner  # auth.owner_of(token)
        self.reopen_url = reopen_url
        self.source = source
        self.state = StreamState.STARTING
        self.error: str | None = None
        self.created = taken_over.created if taken_over else time.time()
        self.handed_over = False  # another worker took it over: this copy no longer writes its record
        self.farewell: StreamMoved | StreamEnding | None = None  # what its clients hear when removed
        self.removed = asyncio.Event()  # set once the stream is being deleted
        self.media_timed_out = asyncio.Event()  # set once its peer went silent (`time_out`)
        self.cut_by: ErrorCode | None = None  # why its worker cut the answers being written
        self._writing: set[Answer] = set()  # answers being written or logged
        self._settled = asyncio.Event()  # none is
        self._settled.set()
        self.task: asyncio.Task[None] | None = None
        self.watchers = 0  # websocket clients on the stream now
        self.quiet_since = time.monotonic()  # when it ended, or its last watcher left since
        self._scheduler = scheduler
        self._metrics = metrics
        self.chunk = chunk
        self.pruning = pruning_info(pipeline)
        self.sampling = sampling_info(pipeline)
        # `stream.update` may lower the default answer length, not raise it past the config's
        self.max_tokens_limit = pipeline.session.settings.max_new_tokens
        self.model = model
        self._queue = QueueStats(0, 0)
        self.chunks_received = 0
        self.chunks_processed = 0
        self.chunks_dropped_redundant = 0
        self.chunks_encoder_skipped = 0
        self.chunks_discarded = 0
        self.tokens_in = 0
        self.tokens_kept = 0
        self.kv_tokens = 0
        self.kv_bytes = 0
        self.questions_answered = 0
        self.reconnects = 0
        self._source_dropped = 0  # the source's `chunks_dropped` already counted
        self._rtf: deque[float] = deque(maxlen=RTF_WINDOW)
        self._latency = LatencyWindow()
        self._service_latency = service_latency
        self.last_report: ChunkReport | None = None
        self.memory: StreamMemory | None = None  # long memory, when the service has it on
        self._offloaded = 0  # the memory's chunks_offloaded already counted in the metrics
        self._recall_latency = LatencyWindow()
        self._service_recall_latency = service_recall_latency
        if isinstance(source, ReconnectingSource):
            source.on_state = self.source_state

    # -- lifecycle -------------------------------------------------------------------------

    def _set_state(self, state: StreamState, error: str | None = None) -> None:
        if self.state in FINAL_STATES or state is self.state:
            return
        self.state, self.error = state, error
        if state in FINAL_STATES:
            self.quiet_since = time.monotonic()
        details = {} if error is None else {"error": error}
        event("stream.state", stream=self.id, state=state.value, **details)

    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """A websocket client is on the stream: an ended stream is not expired while one is."""
        self.watchers += 1
        try:
            yield
        finally:
            self.watchers -= 1
            self.quiet_since = time.monotonic()

    def expired(self, ttl_s: float, now: float) -> bool:
        """Ended (or failed) and nobody on it for `ttl_s`."""
        return self.state in FINAL_STATES and not self.watchers and now - self.quiet_since >= ttl_s

    def chunk_received(self, chunk: AVChunk) -> None:
        if self.state is StreamState.STARTING:  # a reconnecting source says itself when it is back
            self._set_state(StreamState.LIVE)
        self._count_source_drops()
        self.chunks_received += 1
        self._metrics.chunks_received.inc(self.id)
        self._scheduler.submit_chunk(self.id, chunk)
        self._metrics.queue_depth.labels(self.id).set(self.queue().depth)

    def source_state(self, state: Literal["live", "reconnecting"], reason: str | None) -> None:
        """The source lost its camera (`reason` says why) or has it back."""
        if state == "reconnecting":
            self._set_state(StreamState.RECONNECTING, reason)
        elif self.state is StreamState.RECONNECTING:
            self.reconnects += 1
            self._metrics.source_reconnects.inc(self.id)
            self._set_state(StreamState.LIVE)

    def _count_source_drops(self) -> None:
        """Chunks the source dropped before the stream took them count as received and shed:
        the pipeline fell behind real time, as when the worker's queue sheds one."""
        dropped = self.source.chunks_dropped - self._source_dropped
        if dropped <= 0:
            return
        self._source_dropped += dropped
        self.chunks_received += dropped
        if not self.removed.is_set():
            self._metrics.chunks_received.inc(self.id, dropped)
            self._metrics.chunks_dropped.inc(self.id, dropped, reason="shed")

    def finish(self) -> None:
        self._set_state(StreamState.ENDED)

    def fail(self, message: str) -> None:
        self._set_state(StreamState.ERROR, message)

    def time_out(self, seconds: float) -> None:
        """The peer sent no media for `seconds` and was hung up on: the stream ends, and its
        websocket clients hear `stream.ending` with reason `media_timeout`."""
        self._set_state(
            StreamState.ENDED, f"no media from the peer for {seconds:g} s (service.webrtc_media_timeout_s)"
        )
        self.media_timed_out.set()

    # -- scheduler callbacks (StreamListener) ---------------------------------------------

    def chunk_processed(self, outcome: ChunkOutcome) -> None:
        if self.removed.is_set():
            return
        report, session = outcome.report, outcome.session
        self.chunks_processed += 1
        self.last_report = report
        # The session's totals: a `previous`-policy eviction lowers what a chunk kept earlier.
        self.tokens_in = session.video_tokens_in + session.audio_tokens
        self.tokens_kept = session.video_tokens_kept + session.audio_tokens
        self.kv_tokens, self.kv_bytes = outcome.cache_tokens, outcome.cache_bytes
        self._rtf.append(outcome.seconds / self.chunk.seconds)
        m = self._metrics
        m.chunks_processed.inc(self.id)
        if report.video_dropped or report.previous_video_evicted:
            self.chunks_dropped_redundant += 1
            m.chunks_dropped.inc(self.id, reason="redundant")
        if report.encoder_skipped:
            self.chunks_encoder_skipped += 1
            m.encoder_skipped.inc(self.id)
        m.tokens_in.inc(self.id, report.tokens_in)
        m.tokens_kept.inc(self.id, report.tokens_kept)
        m.compression.labels(self.id).set(self.compression)
        m.real_time_factor.labels(self.id).set(self.real_time_factor or 0.0)
        m.queue_depth.labels(self.id).set(self.queue().depth)
        m.kv_tokens.labels(self.id).set(self.kv_tokens)
        m.kv_bytes.labels(self.id).set(self.kv_bytes)
        if self.memory is not None:
            memory = self.memory.stats()
            m.memory_host_bytes.labels(self.id).set(memory.host_bytes)
            m.memory_disk_bytes.labels(self.id).set(memory.disk_bytes)
            m.chunks_offloaded.inc(self.id, memory.chunks_offloaded - self._offloaded)
            self._offloaded = memory.chunks_offloaded

    def discard_unprocessed(self) -> None:
        """Deleted and out of the scheduler: the chunks still pending or prefilling will never
        be processed; count them, so that what it received adds up."""
        shed = self.queue().shed
        self._queue = QueueStats(0, shed)
        self.chunks_discarded = self.chunks_received - self.chunks_processed - shed - self._source_dropped
        self._metrics.chunks_dropped.inc(self.id, self.chunks_discarded, reason="discarded")

    def chunk_failed(self, index: int, error: Exception) -> None:
        if self.removed.is_set():
            return
        self.fail(f"chunk {index} could not be processed: {error}")
        if self.task is not None:
            self.task.cancel()

    def chunk_shed(self, chunk: AVChunk) -> None:
        if self.removed.is_set():
            return
        self._metrics.chunks_dropped.inc(self.id, reason="shed")
        event("chunk.shed", logging.DEBUG, stream=self.id, chunk=chunk.index)

    # -- questions -------------------------------------------------------------------------

    def ask(
        self, question_id: str, text: str, max_tokens: int | None, recall: RecallSpec | None = None
    ) -> tuple[Answer, ChunkRecall | None]:
        """Queue a question; with memory, also the recall it answers over (default "auto"),
        whose spans are known once the answer is done."""
        if self.removed.is_set():
            raise ServiceError("stream_ended", f"stream {self.id} was deleted", id=question_id)
        if self.memory is None and recall not in (None, "recent"):
            error = MemoryDisabledError(
                'this stream has no long memory (memory.enabled is off): ask with recall "recent" or none'
            )
            raise ServiceError(error.code, str(error), id=question_id)
        chunk_recall = None if self.memory is None else self.memory.recall(recall or "auto")
        try:
            answer = self._scheduler.ask(self.id, text, max_tokens, chunk_recall)
        except TooManyQuestionsError as exc:
            raise ServiceError("too_many_questions", str(exc), id=question_id) from None
        self._writing.add(answer)  # until `settled(answer)`
        self._settled.clear()
        return answer, chunk_recall

    def settled(self, answer: Answer) -> None:
        """The answer is over and, if it was given, logged."""
        self._writing.discard(answer)
        if not self._writing:
            self._settled.set()

    async def cut_answers(self, reason: ErrorCode) -> None:
        """Stop every answer being written (`reason`: why, in `cut_by`, for their clients and
        the answer log) and return once each one is settled: logged as far as it got."""
        self.cut_by = reason
        for answer in list(self._writing):
            answer.cancel()
        await self._settled.wait()

    async def update(self, update: StreamUpdate) -> None:
        """Apply a `stream.update`: the next chunk is pruned, and the next question sampled, with
        the new settings (`Scheduler.reconfigure`: on the worker, between two chunks)."""
        pruning = update.pruning.model_dump(exclude_none=True) if update.pruning else {}
        sampling = update.sampling.model_dump(exclude_none=True) if update.sampling else {}
        if "max_tokens" in sampling:
            max_tokens = sampling.pop("max_tokens")
            if max_tokens > self.max_tokens_limit:
                raise ServiceError(
                    "invalid_message",
                    f"sampling.max_tokens: at most {self.max_tokens_limit} (session.max_new_tokens)",
                    event_id=update.event_id,
                )
            sampling["max_new_tokens"] = max_tokens
        if self.removed.is_set():
            raise ServiceError("stream_ended", f"stream {self.id} was deleted", event_id=update.event_id)
        try:
            pipeline = await self._scheduler.reconfigure(self.id, pruning, sampling)
        except UnknownStreamError:  # deleted while the update waited
            raise ServiceError(
                "stream_ended", f"stream {self.id} was deleted", event_id=update.event_id
            ) from None
        self.pruning, self.sampling = pruning_info(pipeline), sampling_info(pipeline)
        event("stream.updated", stream=self.id, **pruning, **sampling)

    def record_answer(self, result: AnswerResult, recall: ChunkRecall | None = None) -> None:
        if self.removed.is_set():
            return
        self.questions_answered += 1
        self._metrics.questions.inc(self.id)
        if result.time_to_first_delta_s is not None:
            self._latency.add(result.time_to_first_delta_s)
            self._service_latency.add(result.time_to_first_delta_s)
            self._metrics.first_delta.observe(result.time_to_first_delta_s)
        if recall is not None and recall.loaded and recall.spec != "recent":
            self._recall_latency.add(recall.seconds)
            self._service_recall_latency.add(recall.seconds)
            self._metrics.recalls.inc(self.id, mode=recall.mode)
            self._metrics.recall_seconds.observe(recall.seconds)

    # -- stats -----------------------------------------------------------------------------

    def queue(self) -> QueueStats:
        """The scheduler's queue numbers; the last ones seen once the stream has left it."""
        with contextlib.suppress(UnknownStreamError):
            self._queue = self._scheduler.queue_stats(self.id)
        return self._queue

    @property
    def compression(self) -> float:
        return 1.0 - self.tokens_kept / self.tokens_in if self.tokens_in else 0.0

    @property
    def real_time_factor(self) -> float | None:
        return sum(self._rtf) / len(self._rtf) if self._rtf else None

    def record(self, worker: str) -> StreamRecord:
        return StreamRecord(
            id=self.id,
            kind=self.kind.value,
            source=self.description,
            state=self.state.value,
            error=self.error,
            created=self.created,
            worker=worker,
            reopen_url=self.reopen_url,
            owner=self.owner,
        )

    def counters(self) -> Counters:
        """The scalar stats, as the store publishes them for other workers and dashboards."""
        stats = self.info().stats.model_dump()
        return {name: value for name, value in stats.items() if not isinstance(value, dict)}

    def info(self) -> StreamInfo:
        self._count_source_drops()
        queue = self.queue()
        return StreamInfo(
            id=self.id,
            kind=self.kind,
            source=self.description,
            state=self.state,
            error=self.error,
            created=self.created,
            chunk=self.chunk,
            pruning=self.pruning,
            model=self.model,
            sampling=self.sampling,
            stats=StreamStatsBody(
                chunks_received=self.chunks_received,
                chunks_processed=self.chunks_processed,
                chunks_dropped_redundant=self.chunks_dropped_redundant,
                chunks_encoder_skipped=self.chunks_encoder_skipped,
                chunks_shed=queue.shed + self._source_dropped,
                chunks_discarded=self.chunks_discarded,
                tokens_in=self.tokens_in,
                tokens_kept=self.tokens_kept,
                compression=self.compression,
                real_time_factor=self.real_time_factor,
                queue_depth=queue.depth,
                kv_tokens=self.kv_tokens,
                kv_bytes=self.kv_bytes,
                questions_answered=self.questions_answered,
                reconnects=self.reconnects,
                answer_latency=self._latency.summary(),
                memory=self.memory_stats(),
                last_chunk=None if self.last_report is None else _overlay(self.last_report),
            ),
        )

    def memory_stats(self) -> MemoryStatsBody:
        held = None if self.memory is None else self.memory.stats()
        return MemoryStatsBody(
            enabled=held is not None,
            device_bytes=self.kv_bytes,
            **{name: 0 if held is None else getattr(held, name) for name in MEMORY_FIGURES},
            recall_latency=self._recall_latency.summary(),
        )


class StreamRegistry:
    """Every stream of this process, by id."""

    def __init__(
        self,
        settings: Settings,
        backbone: Backbone,
        scheduler: Scheduler,
        metrics: ServiceMetrics,
        store: Store,
    ):
        self.settings = settings
        self.backbone = backbone
        self.scheduler = scheduler
        self.metrics = metrics
        self.store = store
        self.worker = store.worker
        self._streams: dict[str, Stream] = {}
        self._opening: Counter[str] = Counter()  # streams being set up, per owner (for the quota)
        self.draining = False  # shutting down: no new stream, not even one taken over
        self._deleted: Counter[str] = Counter()  # the `COUNTED_STATS` of deleted streams
        self._latency = LatencyWindow()  # every stream's answers
        self._recall_latency = LatencyWindow()  # every stream's recalls
        self.memory = (
            MemoryManager(backbone, settings.memory, settings.chunk.seconds)
            if settings.memory.enabled
            else None
        )
        metrics.watch_streams(self.count_by_state, self.totals)
        metrics.watch_store(store.health)
        ttl = settings.service.ended_stream_ttl_s
        self._chores: list[asyncio.Task[None]] = []
        if ttl is not None:
            self._chores.append(asyncio.create_task(self._expire(ttl), name="stream-expiry"))

    async def open(
        self,
        kind: StreamKind,
        source: ChunkSource,
        description: str,
        owner: str,
        *,
        reopen_url: str | None = None,
        taken_over: StreamRecord | None = None,
    ) -> Stream:
        """Set up a stream's pipeline on the worker, then start consuming its source. `owner` is
        `auth.owner_of(token)`; `taken_over` continues a stream whose lease this worker claimed."""
        self._check_room(owner)
        self._opening[owner] += 1
        try:
            # the session prefills its prompt prefix: a model call, so it runs on the worker
            pipeline = await self.scheduler.call(create_pipeline, self.backbone, self.settings)
        finally:
            self._opening[owner] -= 1
        stream = Stream(
            kind,
            description,
            owner,
            source,
            self.scheduler,
            self.metrics,
            ChunkTiming(seconds=self.settings.chunk.seconds, fps=self.settings.chunk.fps),
            pipeline,
            ModelInfo(path=self.settings.model.path, random_weights=self.backbone.random_weights),
            self._latency,
            self._recall_latency,
            reopen_url=reopen_url,
            taken_over=taken_over,
        )
        if self.memory is not None:  # before the worker sees the session: it evicts from chunk one
            stream.memory = self.memory.open(stream.id, pipeline.session)
        self._streams[stream.id] = stream
        self.scheduler.register(stream.id, pipeline, stream)
        self.metrics.add_stream(stream.id)
        try:
            # the lease first: the store never holds an active record nobody leases (claimable);
            # a new id is nobody's, a claimed stream's lease is already this worker's
            if taken_over is None:
                await self.store.acquire_lease(stream.id)
            await self._save(stream)
        except BaseException:  # no stream came of it: nothing of it may stay behind
            self._withdraw(stream)
            self._release(stream)
            raise
        stream.task = asyncio.create_task(self._consume(stream), name=f"stream-{stream.id}")
        event("stream.created", stream=stream.id, kind=kind.value, source=description)
        return stream

    def _running_for(self, owner: str) -> int:
        """The owner's streams that run (or are being set up): what its quota counts."""
        running = (s for s in self._streams.values() if s.state in ACTIVE_STATES)
        return sum(stream.owner == owner for stream in running) + self._opening[owner]

    def _holding_room(self) -> int:
        """Streams that take a worker slot: running ones, and ended ones that hold media in
        their cache (a stream that ended before any chunk came, such as a WebRTC peer that
        never sent media, holds nothing)."""
        holding = (s for s in self._streams.values() if s.state in ACTIVE_STATES or s.chunks_received)
        return sum(1 for _ in holding) + self._opening.total()

    def room(self) -> int:
        """How many more streams this worker takes now (`service.max_streams`; none while draining)."""
        return 0 if self.draining else max(0, self.settings.service.max_streams - self._holding_room())

    def has_room(self, owner: str) -> bool:
        try:
            self._check_room(owner)
        except ServiceError:
            return False
        return True

    def _check_room(self, owner: str) -> None:
        """The token's quota, then the worker's `max_streams` (streams being set up count)."""
        if self.draining:
            raise ServiceError(
                WORKER_DRAINING, "this worker is shutting down; open the stream on another", status=503
            )
        check_stream_quota(self.settings.service, self._running_for(owner))
        limit = self.settings.service.max_streams
        if self._holding_room() >= limit:
            raise ServiceError(
                "service_full",
                f"this worker holds its limit of {limit} streams (service.max_streams); "
                "try again once one is deleted or expires",
                status=503,
            )

    async def _consume(self, stream: Stream) -> None:
        service = self.settings.service
        first_media_s = service.first_media_timeout_s
        # a WebRTC peer that vanishes without a BYE is otherwise noticed ~30 s later (ICE consent)
        silence_s = service.webrtc_media_timeout_s if stream.kind is StreamKind.WEBRTC else None
        deadline = asyncio.timeout(first_media_s)  # a source that never delivers ends
        try:
            async with contextlib.aclosing(stream.source.chunks()) as chunks, deadline:
                async for chunk in chunks:
                    # media came: the next chunk is due within silence_s (WebRTC), else whenever
                    due = None if silence_s is None else asyncio.get_running_loop().time() + silence_s
                    deadline.reschedule(due)
                    await self._take(stream, chunk)
        except Exception as exc:  # the source's failure, e.g. an RTSP camera given up
            timed_out = isinstance(exc, TimeoutError) and deadline.expired()
            if timed_out and silence_s is not None and stream.chunks_received:
                await self._went_silent(stream, silence_s)
                return
            if timed_out:
                exc = TimeoutError(f"no media within {first_media_s:g} s (service.first_media_timeout_s)")
            stream.fail(str(exc) or type(exc).__name__)
            event(
                "stream.source_failed",
                logging.WARNING,
                stream=stream.id,
                error=str(exc),
                exc_type=type(exc).__name__,
            )
        else:
            stream.finish()
        finally:  # ended, failed, or cancelled by a delete, a failed chunk or a hand-over
            if not stream.handed_over:
                await self._save(stream)
                await self.store.release_lease(stream.id)

    async def _take(self, stream: Stream, chunk: AVChunk) -> None:
        state = stream.state
        stream.chunk_received(chunk)
        if stream.state is not state:  # now live: other workers see it so
            await self._save(stream)

    async def _went_silent(self, stream: Stream, silence_s: float) -> None:
        """The WebRTC peer sent no media for `silence_s`: it vanished without hanging up. Leaving
        `chunks()` closed its connection and flushed its chunker; take what that held, then end."""
        async with contextlib.aclosing(stream.source.chunks()) as rest:
            async for chunk in rest:
                await self._take(stream, chunk)
        event(
            "stream.media_timeout",
            logging.WARNING,
            stream=stream.id,
            reason=MEDIA_TIMEOUT,
            timeout_s=silence_s,
            chunks=stream.chunks_received,
        )
        stream.time_out(silence_s)

    async def _save(self, stream: Stream) -> None:
        await self.store.put_stream(stream.record(self.worker))
        await self.store.put_counters(stream.id, stream.counters())

    def active_streams(self) -> dict[str, tuple[StreamRecord, Counters]]:
        """The record and counters of every stream this worker runs (the heartbeat renews their
        leases and writes both)."""
        return {
            s.id: (s.record(self.worker), s.counters())
            for s in self._streams.values()
            if s.state in ACTIVE_STATES and not s.handed_over  # a drained camera's lease stays free
        }

    async def lease_lost(self, stream_id: str) -> None:
        """Another worker claimed the stream while this one could not renew its lease (a stall
        longer than the lease): it runs the camera now, so this copy stops without touching the
        record or the lease that are the other worker's."""
        event("stream.lease_lost", logging.WARNING, stream=stream_id, worker=self.worker)
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.handed_over = True
            await self.delete(stream_id)

    async def drain(self, hand_over: Callable[[str], Awaitable[str | None]]) -> None:
        """Shut down without losing cameras: take no new stream, hand every running camera to
        another worker now (`hand_over(stream_id)` finds one that adopts it, its name, or None),
        and end the rest, telling each stream's clients which (`stream.moved`, `stream.ending`)."""
        self.draining = True
        event("service.draining", streams=len(self._streams))
        await asyncio.gather(*(self._leave(stream, hand_over) for stream in self.all()))

    async def _leave(self, stream: Stream, hand_over: Callable[[str], Awaitable[str | None]]) -> None:
        await stream.cut_answers(WORKER_DRAINING)  # logged before the worker goes
        worker = None
        if stream.kind is StreamKind.RTSP and stream.reopen_url and stream.state in ACTIVE_STATES:
            # Stop reading the camera, leave its record active and its lease free: claimable now.
            stream.handed_over = True
            if stream.task is not None:
                stream.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.task
            await self._save(stream)
            await self.store.release_lease(stream.id)
            worker = await hand_over(stream.id)  # None: a worker with room takes it at its next round
        if worker is not None:
            stream.farewell = StreamMoved(stream=stream.id, worker=worker)
            event("stream.moved", stream=stream.id, worker=worker)
        else:
            stream.farewell = StreamEnding(stream=stream.id, reason=WORKER_DRAINING)
        if stream.id in self._streams:  # not deleted meanwhile
            await self.delete(stream.id)

    async def continue_camera(self, record: StreamRecord) -> None:
        """Run on here a camera this worker claimed (`cluster.takeover`), under its stream id."""
        from streamguard.ingest.rtsp import RtspSource

        assert record.reopen_url is not None and record.owner is not None  # movable, checked by the claim
        service = self.settings.service
        source = RtspSource(
            record.reopen_url, self.settings.chunk, max_pending_chunks=service.max_pending_chunks
        )
        await self.open(
            StreamKind.RTSP,
            source,
            record.source,
            record.owner,
            reopen_url=record.reopen_url,
            taken_over=record,
        )
        self.metrics.streams_taken_over.inc()
        event("stream.taken_over", logging.WARNING, stream=record.id, source=record.source)

    def find(self, stream_id: str) -> Stream | None:
        return self._streams.get(stream_id)

    def get(self, stream_id: str) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise unknown_stream(stream_id)
        return stream

    def all(self) -> list[Stream]:
        return list(self._streams.values())

    def count_by_state(self) -> Counter[StreamState]:
        return Counter(stream.state for stream in self._streams.values())

    def totals(self) -> ServiceStats:
        """Every stream this worker has run, deleted ones included; the queue and KV figures
        are of the streams it holds now."""
        held = [stream.info().stats for stream in self._streams.values()]
        counted = {
            name: self._deleted[name] + sum(getattr(stats, name) for stats in held) for name in COUNTED_STATS
        }
        tokens_in, tokens_kept = counted["tokens_in"], counted["tokens_kept"]
        return ServiceStats(
            streams=dict(self.count_by_state()),
            **counted,
            compression=1.0 - tokens_kept / tokens_in if tokens_in else 0.0,
            queue_depth=sum(stats.queue_depth for stats in held),
            kv_tokens=sum(stats.kv_tokens for stats in held),
            kv_bytes=sum(stats.kv_bytes for stats in held),
            answer_latency=self._latency.summary(),
            memory=MemoryStatsBody(
                enabled=self.memory is not None,
                **{name: sum(getattr(s.memory, name) for s in held) for name in MEMORY_SUMS},
                recall_latency=self._recall_latency.summary(),
            ),
        )

    async def delete(self, stream_id: str) -> StreamInfo:
        """Stop the source, end open questions, free the cache; returns the final stats."""
        stream = self.get(stream_id)
        self._withdraw(stream)
        if stream.task is not None:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task
        stream.finish()
        if not stream.handed_over:
            await self._save(stream)  # the record (and its answer log) outlives the stream
        stream.info()  # the source's last drops and the scheduler's last queue figures
        self._release(stream)
        final = stream.info()
        self._deleted.update({name: getattr(final.stats, name) for name in COUNTED_STATS})
        event(
            "stream.deleted",
            stream=stream_id,
            chunks_processed=final.stats.chunks_processed,
            chunks_shed=final.stats.chunks_shed,
            questions=final.stats.questions_answered,
        )
        return final

    def _withdraw(self, stream: Stream) -> None:
        """Out of the registry; from here on the scheduler's late callbacks change nothing."""
        del self._streams[stream.id]
        stream.removed.set()

    def _release(self, stream: Stream) -> None:
        """Free what the stream holds in the scheduler (its cache; its unprocessed chunks, counted
        as discarded) and in the metrics."""
        self.scheduler.unregister(stream.id)
        stream.discard_unprocessed()
        self.metrics.forget(stream.id)
        if self.memory is not None:  # its files go with it
            self.memory.close(stream.id)

    async def _expire(self, ttl_s: float) -> None:
        """Delete the streams that ended and have had no websocket client for `ttl_s`."""
        while True:
            await asyncio.sleep(min(ttl_s, EXPIRY_CHECK_S))
            now = time.monotonic()
            for stream in self.all():
                if stream.expired(ttl_s, now) and stream.id in self._streams:  # not deleted meanwhile
                    event("stream.expired", stream=stream.id, state=stream.state.value, ttl_s=ttl_s)
                    try:
                        await self.delete(stream.id)
                    except Exception:  # one stream's failure must not stop the expiry of the others
                        event("stream.expiry_failed", logging.ERROR, exc_info=True, stream=stream.id)

    async def close(self) -> None:
        for chore in self._chores:
            chore.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        for stream_id in list(self._streams):
            await self.delete(stream_id)
        if self.memory is not None:
            self.memory.close_all()


def unknown_stream(stream_id: str) -> ServiceError:
    return ServiceError("unknown_stream", f"no stream with id {stream_id!r}", status=404)


async def open_source(
    request: CreateStreamRequest, settings: Settings
) -> tuple[ChunkSource, StreamKind, str]:
    """The source a `POST /v1/streams` body asks for, checked before any stream exists."""
    if isinstance(request, FileStreamRequest):
        if not settings.service.allow_file_sources:
            raise ServiceError(
                "file_sources_disabled",
                "file sources are disabled on this server; an operator can enable them with "
                "service.allow_file_sources (env STREAMGUARD_SERVICE__ALLOW_FILE_SOURCES=true)",
                status=403,
            )
        from streamguard.ingest import on_own_thread
        from streamguard.ingest.files import FileSource, probe

        path = media_file(request.path, settings.service.file_root)
        timeout_s = settings.service.file_probe_timeout_s
        try:  # on a thread of its own: a probe that hangs holds no shared executor
            await asyncio.wait_for(on_own_thread(lambda: probe(path), "file probe"), timeout_s)
        except TimeoutError:
            raise ServiceError(
                "invalid_source", f"{request.path}: not readable within {timeout_s:g} s", status=422
            ) from None
        except (ValueError, OSError) as exc:  # MediaError is a ValueError
            raise ServiceError("invalid_source", f"{request.path}: {exc}", status=422) from None
        source = FileSource(path, settings.chunk, realtime=request.realtime)
        return source, StreamKind.FILE, request.path
    from streamguard.ingest.rtsp import RtspSource, SourceUnreachable
    from streamguard.ingest.urls import allowed_destination, parse_camera_url

    allow = settings.service.rtsp_allow
    # checked before any connection: a refused host and port look alike, whatever answers there
    if allow is not None and not await allowed_destination(parse_camera_url(request.url), allow):
        raise ServiceError(
            "destination_not_allowed",
            "this server may not connect to that camera's host (service.rtsp_allow)",
            status=403,
        )
    source = RtspSource(request.url, settings.chunk, max_pending_chunks=settings.service.max_pending_chunks)
    try:  # a camera that cannot be reached is refused now, not found dead in the stream list
        await source.check()
    except SourceUnreachable as exc:
        raise ServiceError("source_unreachable", str(exc), status=422) from None
    return source, StreamKind.RTSP, source.name


# Never media files, whatever `file_root` says: devices, processes, kernel state.
_SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def media_file(requested: str, file_root: str | None) -> Path:
    """The file a file source may read: a regular file inside `file_root` (default: the working
    directory), links resolved; never a device, FIFO, socket or a file of /proc, /sys or /dev,
    which could block a reader for good."""
    root = Path(file_root or os.getcwd()).resolve()
    path = (root / requested).resolve()
    if not path.is_relative_to(root) or any(path.is_relative_to(folder) for folder in _SYSTEM_FOLDERS):
        raise ServiceError(
            "invalid_source",
            f"{requested}: outside the folder file sources are read from (service.file_root)",
            status=422,
        )
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ServiceError("invalid_source", f"{requested}: {exc.strerror}", status=422) from None
    if not stat.S_ISREG(mode):
        raise ServiceError("invalid_source", f"{requested}: not a regular file", status=422)
    return path


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1] * 1000.0


def _overlay(report: ChunkReport) -> ChunkOverlay:
    return ChunkOverlay(
        index=report.index,
        start=report.start,
        grid=report.grid,
        resized_hw=report.resized_hw,
        semantic=report.semantic,
        spatial=report.spatial,
        video_dropped=report.video_dropped,
        encoder_skipped=report.encoder_skipped,
        previous_video_evicted=report.previous_video_evicted,
        audio_missing=report.audio_missing,
        video_tokens_in=report.video_tokens_in,
        video_tokens_kept=report.video_tokens_kept,
        audio_tokens=report.audio_tokens,
        similarity=report.similarity,
    )


def pruning_info(pipeline: ChunkPipeline) -> PruningInfo:
    """How a stream's pipeline prunes its chunks now."""
    pruner = pipeline.pruner
    return PruningInfo(
        method=pruner.settings.method,
        rho_sem=pruner.settings.rho_sem,
        rho_spa=pruner.settings.rho_spa,
        drop_policy=pruner.drop_rule.policy,
        semantic_reference=pruner.reference_mode,
    )


def sampling_info(pipeline: ChunkPipeline) -> SamplingInfo:
    """How a stream's questions are sampled unless they say otherwise."""
    settings = pipeline.session.settings
    return SamplingInfo(
        max_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p
    )
