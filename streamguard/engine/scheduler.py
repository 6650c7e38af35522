"""The one inference worker: every model call of the process runs on its single thread.

A chunk is preprocessed (video processor, log-mel, the pre-filter's thumbnails) as it is
submitted, on a small pool of threads off the worker (`engine.preprocess_workers`); the worker
takes model-ready chunks only. It runs in rounds:

1. calls (`await scheduler.call(fn)`: stream set-up such as the prefix prefill, or a live
   stream's new pruning and sampling settings, `reconfigure`),
2. answers: every stream's head question decodes `engine.decode_steps_per_round` tokens, all
   streams' tokens in ONE batched forward per step (a new question's prompt goes in the same
   forward as the others' next tokens; `Backbone.forward_batch`),
3. chunks: the next preprocessed chunk of up to `engine.max_chunks_per_round` streams without a
   question in flight, taken round-robin, judged by each stream's pixel pre-filter (a chunk it
   skips leaves the vision batch), encoded in ONE vision-tower and ONE audio-tower call, then
   selected and prefilled stream by stream (prefills are not batched: each is already hundreds of
   tokens, and a stream's drop rule, evictions and re-bases run in its order).

So a question waits for at most the round that is running when it arrives, and between two of
its rounds' tokens at most one round of chunks runs. A stream's own chunks wait while it
answers (the question sits at the end of its cache until it is cut off again): they are
buffered, not shed, up to `engine.answer_buffer_chunks` beyond the pending bound until the
stream has caught up. Each stream's chunks are processed in arrival order.

`engine.batching: false` is the serial engine: chunks preprocessed on the worker, one question
token per stream per round (a forward each), one chunk per round, no answer buffer.

Backpressure: each stream holds at most `max_pending_chunks` chunks waiting for the worker
(plus the answer buffer). When one more arrives the oldest pending chunk is shed (it never
reaches the model) and counted; the newest chunks are the ones a live question is about. A
stream takes at most `max_questions_per_stream` questions waiting or answering; one more is
`TooManyQuestionsError`. `cancel()` ends an answer before its next token. A chunk is only taken
once preprocessed: at real chunk rates it waits seconds before it could be shed, far longer than
the pool takes; a pool that falls that far behind (the CPU saturated) sheds like a slow worker.

Every call, question, chunk and preprocessing job runs guarded: whatever one raises fails that
item alone (the caller hears the error, it is logged) and the worker serves on; a batched step
that fails fails the items in it, each encoder batch is retried chunk by chunk to find the
culprit. `alive` says whether the worker thread runs; `stats().busy_s` how long it worked.

Test hook: `chunk_delay_s` (default: env `STREAMGUARD_TEST_CHUNK_DELAY_S`, else 0) sleeps in the
worker before every chunk prefill, slowing the real model down so shedding can be exercised.

Results reach the event loop that called `start()` through `call_soon_threadsafe`, in the order
the worker produced them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from streamguard.backbones.ragged import RaggedRow
from streamguard.config import EngineSettings
from streamguard.engine.pipeline import EncodedAVChunk, PreparedChunk, encode_chunks
from streamguard.engine.session import AnswerDecoder, Recall, SamplingParams, SessionStats, StreamSession

if TYPE_CHECKING:
    from streamguard.backbones.base import Backbone
    from streamguard.engine.pipeline import ChunkPipeline, ChunkReport
    from streamguard.ingest.chunker import AVChunk

log = logging.getLogger("streamguard.scheduler")

T = TypeVar("T")

CHUNK_DELAY_ENV = "STREAMGUARD_TEST_CHUNK_DELAY_S"


class UnknownStreamError(KeyError):
    """A stream id the scheduler does not hold."""


class StreamEndedError(RuntimeError):
    """The stream (or the worker) went away while a question was waiting or answering."""


class TooManyQuestionsError(RuntimeError):
    """The stream already has `max_questions_per_stream` questions waiting or answering."""


@dataclass
class ChunkOutcome:
    """One processed chunk, with the stream's cache measured right after it (on the worker)."""

    report: ChunkReport
    seconds: float  # worker time for the chunk, the test delay included
    cache_tokens: int
    cache_bytes: int
    session: SessionStats  # a copy of the session's counters after this chunk


class StreamListener(Protocol):
    """What happens to a stream's chunks; every method is called on the event loop."""

    def chunk_processed(self, outcome: ChunkOutcome) -> None: ...

    def chunk_failed(self, index: int, error: Exception) -> None: ...

    def chunk_shed(self, chunk: AVChunk) -> None: ...


@dataclass
class AnswerResult:
    text: str
    generated_tokens: int
    context_tokens: int
    prompt_tokens: int  # the question's turn
    finish_reason: str  # "stop", "length" or "cancelled"
    # Measured from the moment the question was submitted: what the asker waits.
    time_to_first_delta_s: float | None
    total_s: float


@dataclass(frozen=True)
class QueueStats:
    depth: int  # chunks waiting for the worker
    shed: int  # chunks dropped unprocessed so far
    ready: int = 0  # of the waiting chunks, those preprocessed (model-ready)


@dataclass(frozen=True)
class SchedulerStats:
    streams: int
    pending_chunks: int
    questions_waiting: int
    chunks_processed: int
    chunks_shed: int
    questions_answered: int
    alive: bool  # the worker thread runs
    busy_s: float = 0.0  # worker seconds spent on calls, answers and chunks since start
    worker_cpu_s: float = 0.0  # CPU seconds of the worker thread in that time
    preprocess_cpu_s: float = 0.0  # CPU seconds of the preprocessing pool


class Answer:
    """A submitted question: `async for delta in answer` yields its text as it decodes;
    `result` is set once it ends. `cancel()` stops it before its next token."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]):
        self._loop = loop
        self._wake = wake
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._cancel = threading.Event()
        self._ended = False
        self.result: AnswerResult | None = None

    def cancel(self) -> None:
        if not self._ended:
            self._cancel.set()
            self._wake()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> str:
        if self._ended:
            raise StopAsyncIteration
        kind, value = await self._events.get()
        if kind == "delta":
            return value
        self._ended = True
        if kind == "done":
            self.result = value
            raise StopAsyncIteration
        raise value

    def _post(self, kind: str, value: Any) -> None:
        """From the worker thread."""
        _call_soon(self._loop, self._events.put_nowait, (kind, value))


@dataclass
class _Question:
    answer: Answer
    session: StreamSession
    text: str
    params: SamplingParams
    recall: Recall | None = None
    submitted: float = field(default_factory=time.perf_counter)
    decoder: AnswerDecoder | None = None  # once the session took the question
    parts: list[str] = field(default_factory=list)
    first_delta_s: float | None = None
    done: bool = False


@dataclass
class _Pending:
    """A chunk waiting for the worker, and its preprocessing (None: the worker's own, serial)."""

    chunk: AVChunk
    prepared: Future[PreparedChunk] | None = None

    @property
    def ready(self) -> bool:
        return self.prepared is None or self.prepared.done()


@dataclass
class _Stream:
    id: str
    pipeline: ChunkPipeline
    listener: StreamListener
    pending: deque[_Pending] = field(default_factory=deque)
    questions: deque[_Question] = field(default_factory=deque)
    shed: int = 0


class Scheduler:
    """Owns the model's one worker thread; see the module docstring for the policy."""

    def __init__(
        self,
        max_pending_chunks: int,
        chunk_delay_s: float | None = None,
        *,
        max_questions_per_stream: int | None = None,
        engine: EngineSettings | None = None,
    ):
        """`max_questions_per_stream` None: a stream takes any number of questions. `engine`
        None: the batched engine with its defaults."""
        if max_pending_chunks < 1:
            raise ValueError("max_pending_chunks must be at least 1")
        if max_questions_per_stream is not None and max_questions_per_stream < 1:
            raise ValueError("max_questions_per_stream must be at least 1")
        self.max_pending_chunks = max_pending_chunks
        self.max_questions_per_stream = max_questions_per_stream
        self.engine = engine or EngineSettings()
        if chunk_delay_s is None:
            chunk_delay_s = float(os.environ.get(CHUNK_DELAY_ENV, "0") or 0)
        self.chunk_delay_s = chunk_delay_s
        self._pool = (
            ThreadPoolExecutor(preprocess_workers(self.engine), thread_name_prefix="streamguard-preprocess")
            if self.engine.batching
            else None
        )
        self._cond = threading.Condition()
        self._streams: dict[str, _Stream] = {}  # insertion order: the question order
        self._turns: deque[str] = deque()  # round-robin order for chunks
        self._calls: deque[Callable[[], None]] = deque()
        self._closing: list[_Question] = []  # questions of removed streams, ended by the worker
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shed_total = 0
        self._processed_total = 0
        self._answered_total = 0
        self._busy_s = 0.0
        self._worker_cpu_s = 0.0
        self._preprocess_cpu_s = 0.0

    # -- lifecycle (event loop) ------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; results are delivered to the running event loop."""
        if self._thread is not None:
            raise RuntimeError("the scheduler is already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="streamguard-worker", daemon=True)
        self._thread.start()
        if self.chunk_delay_s:
            log.warning("test hook: the worker sleeps %.3f s before every chunk prefill", self.chunk_delay_s)

    async def stop(self) -> None:
        """Finish the step in progress, end every open question, and join the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        """The worker thread runs: False before `start()` and once it has stopped."""
        return self._thread is not None and self._thread.is_alive()

    # -- streams ---------------------------------------------------------------------------

    def register(self, stream_id: str, pipeline: ChunkPipeline, listener: StreamListener) -> None:
        with self._cond:
            if stream_id in self._streams:
                raise ValueError(f"stream {stream_id} is already registered")
            self._streams[stream_id] = _Stream(stream_id, pipeline, listener)
            self._turns.append(stream_id)

    def unregister(self, stream_id: str) -> None:
        """Forget a stream: its pending chunks go, its questions end with `StreamEndedError`."""
        with self._cond:
            stream = self._streams.pop(stream_id, None)
            if stream is None:
                return
            self._turns.remove(stream_id)
            for pending in stream.pending:
                _cancel(pending)
            stream.pending.clear()
            self._closing.extend(stream.questions)
            self._cond.notify()

    def submit_chunk(self, stream_id: str, chunk: AVChunk) -> None:
        """Queue a chunk (its preprocessing starts); never blocks. Over the bound, the oldest
        pending chunk is shed."""
        shed: list[AVChunk] = []
        with self._cond:
            stream = self._stream(stream_id)
            bound = self._bound(stream)
            while len(stream.pending) >= bound:
                dropped = stream.pending.popleft()
                _cancel(dropped)
                shed.append(dropped.chunk)
            stream.pending.append(_Pending(chunk, self._prepare(stream, chunk)))
            stream.shed += len(shed)
            self._shed_total += len(shed)
            self._cond.notify()
        for dropped_chunk in shed:
            stream.listener.chunk_shed(dropped_chunk)

    def _bound(self, stream: _Stream) -> int:
        """Pending chunks the stream may hold (lock held): more while it answers, and until it
        has caught up after (only then can it hold more than `max_pending_chunks`)."""
        answering = stream.questions or len(stream.pending) > self.max_pending_chunks
        extra = self.engine.answer_buffer_chunks if self.engine.batching and answering else 0
        return self.max_pending_chunks + extra

    def _prepare(self, stream: _Stream, chunk: AVChunk) -> Future[PreparedChunk] | None:
        """Start preprocessing on the pool; the worker hears when it is done."""
        if self._pool is None:
            return None
        future = self._pool.submit(self._prepare_counted, stream.pipeline, chunk)
        future.add_done_callback(lambda _: self._wake())
        return future

    def _prepare_counted(self, pipeline: ChunkPipeline, chunk: AVChunk) -> PreparedChunk:
        """On a pool thread: preprocess, counting the CPU time it takes."""
        started = time.thread_time()
        try:
            return pipeline.prepare(chunk)
        finally:
            with self._cond:
                self._preprocess_cpu_s += time.thread_time() - started

    def queue_stats(self, stream_id: str) -> QueueStats:
        with self._cond:
            stream = self._stream(stream_id)
            ready = sum(p.ready for p in stream.pending)
            return QueueStats(len(stream.pending), stream.shed, ready)

    def stats(self) -> SchedulerStats:
        with self._cond:
            return SchedulerStats(
                streams=len(self._streams),
                pending_chunks=sum(len(s.pending) for s in self._streams.values()),
                questions_waiting=sum(len(s.questions) for s in self._streams.values()),
                chunks_processed=self._processed_total,
                chunks_shed=self._shed_total,
                questions_answered=self._answered_total,
                alive=self.alive,
                busy_s=self._busy_s,
                worker_cpu_s=self._worker_cpu_s,
                preprocess_cpu_s=self._preprocess_cpu_s,
            )

    # -- questions and calls ---------------------------------------------------------------

    def ask(
        self, stream_id: str, text: str, max_tokens: int | None = None, recall: Recall | None = None
    ) -> Answer:
        """Queue a question; `max_tokens` is capped at the session's `max_new_tokens`; `recall`
        (long memory) loads older chunks beside the window for this answer.

        The session validates the question on the worker (the tokenizer is not shared across
        threads): `QuestionTooLongError` / `EmptyQuestionError` come out of the iteration. A
        stream already holding `max_questions_per_stream` questions raises `TooManyQuestionsError`.
        """
        loop = self._running_loop()
        answer = Answer(loop, self._wake)
        with self._cond:
            stream = self._stream(stream_id)
            limit = self.max_questions_per_stream
            if limit is not None and len(stream.questions) >= limit:
                raise TooManyQuestionsError(
                    f"the stream already has {limit} questions waiting or answering; wait for one to finish"
                )
            session = stream.pipeline.session
            limits = session.settings
            params = SamplingParams(
                max_new_tokens=min(max_tokens or limits.max_new_tokens, limits.max_new_tokens),
                temperature=limits.temperature,
                top_p=limits.top_p,
            )
            stream.questions.append(_Question(answer, session, text, params, recall))
            self._cond.notify()
        return answer

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the worker (any model call outside chunks and questions)."""
        loop = self._running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            self._guarded(
                f"call {getattr(fn, '__qualname__', fn)!r}",
                lambda: _call_soon(loop, _settle, future, fn(*args), None),
                partial(_call_soon, loop, _settle, future, None),
            )

        with self._cond:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            self._calls.append(run)
            self._cond.notify()
        return await future

    async def reconfigure(
        self, stream_id: str, pruning: Mapping[str, Any], sampling: Mapping[str, Any]
    ) -> ChunkPipeline:
        """Change how a live stream prunes its next chunks and samples its next questions
        (`ChunkPipeline.reconfigure`), as a call: between two chunk prefills. Returns the pipeline,
        to read the settings now in force."""
        with self._cond:
            pipeline = self._stream(stream_id).pipeline
        await self.call(pipeline.reconfigure, pruning, sampling)
        return pipeline

    # -- the worker thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work)
                if self._stopping:
                    leftover = [q for s in self._streams.values() for q in s.questions] + self._closing
                    calls = list(self._calls)
                    break
                closing, self._closing = self._closing, []
                calls = list(self._calls)
                self._calls.clear()
                heads = [s.questions[0] for s in self._streams.values() if s.questions]
                picked = self._next_chunks()
            started, cpu_started = time.perf_counter(), time.thread_time()
            for question in closing:
                self._end_guarded(question, StreamEndedError("the stream ended"))
            for run in calls:
                run()
            if self.engine.batching:
                self._answer_batched(heads)
                self._process_batched(picked)
            else:
                for question in heads:
                    self._guarded(
                        "a question", partial(self._step_alone, question), partial(self._abandon, question)
                    )
                for stream, pending in picked:
                    self._guarded(
                        f"stream {stream.id}: chunk {pending.chunk.index}",
                        partial(self._process_alone, stream, pending.chunk),
                        partial(_call_soon, self._loop, stream.listener.chunk_failed, pending.chunk.index),
                    )
            with self._cond:
                self._busy_s += time.perf_counter() - started
                self._worker_cpu_s += time.thread_time() - cpu_started
        for question in leftover:
            self._end_guarded(question, StreamEndedError("the service is shutting down"))
        for run in calls:
            run()

    def _guarded(self, what: str, work: Callable[[], None], fail: Callable[[Exception], None]) -> None:
        """Run one item of work; whatever it raises fails that item alone, never the worker."""
        try:
            work()
        except BaseException as exc:  # a library's sys.exit() too: it would end this thread
            log.exception("worker: %s failed", what)
            fail(exc if isinstance(exc, Exception) else RuntimeError(f"{what} failed: {exc!r}"))

    def _end_guarded(self, question: _Question, error: Exception) -> None:
        self._guarded(
            "ending a question", partial(self._end, question, error=error), partial(self._abandon, question)
        )

    def _abandon(self, question: _Question, error: Exception) -> None:
        """End a question whose handling failed: off its stream, with the error, its question cut
        off the cache."""
        question.done = True
        if question.decoder is not None:
            with contextlib.suppress(Exception):
                question.decoder.close()
        self._dequeue(question, answered=False)
        question.answer._post("error", error)

    def _has_work(self) -> bool:
        return (
            self._stopping
            or bool(self._closing or self._calls)
            or any(s.questions or (s.pending and s.pending[0].ready) for s in self._streams.values())
        )

    def _next_chunks(self) -> list[tuple[_Stream, _Pending]]:
        """The round's chunks (lock held): the next model-ready chunk of each stream in turn
        without a question in flight, as many streams as a round takes."""
        limit = self.engine.max_chunks_per_round if self.engine.batching else 1
        picked: list[tuple[_Stream, _Pending]] = []
        for _ in range(len(self._turns)):
            if len(picked) == limit:
                break
            stream = self._streams[self._turns[0]]
            self._turns.rotate(-1)
            if stream.pending and stream.pending[0].ready and not stream.questions:
                picked.append((stream, stream.pending.popleft()))
        return picked

    # -- chunks ----------------------------------------------------------------------------

    def _process_alone(self, stream: _Stream, chunk: AVChunk) -> None:
        """The serial engine: preprocess, encode, select and prefill one chunk on the worker."""
        started = time.perf_counter()
        if self.chunk_delay_s:
            time.sleep(self.chunk_delay_s)
        self._deliver(stream, stream.pipeline.process(chunk), time.perf_counter() - started)

    def _process_batched(self, picked: list[tuple[_Stream, _Pending]]) -> None:
        """Encode the round's chunks together, then select and prefill them stream by stream."""
        started = time.perf_counter()
        prepared: list[tuple[_Stream, PreparedChunk]] = []
        for stream, pending in picked:
            assert pending.prepared is not None  # the batched engine prepares every chunk
            # the pre-filter judges it now, in the stream's order: a chunk it skips has no video left
            self._guarded(
                f"stream {stream.id}: preparing chunk {pending.chunk.index}",
                partial(
                    lambda s, f: prepared.append((s, s.pipeline.screened(f.result()))),
                    stream,
                    pending.prepared,
                ),
                partial(_call_soon, self._loop, stream.listener.chunk_failed, pending.chunk.index),
            )
        encoded = [
            (stream, chunk) for group in _by_backbone(prepared) for stream, chunk in self._encode(group)
        ]
        shared = (time.perf_counter() - started) / max(len(encoded), 1)
        for stream, chunk in encoded:
            self._guarded(
                f"stream {stream.id}: chunk {chunk.chunk.index}",
                partial(self._append, stream, chunk, shared),
                partial(_call_soon, self._loop, stream.listener.chunk_failed, chunk.chunk.index),
            )

    def _encode(self, group: list[tuple[_Stream, PreparedChunk]]) -> list[tuple[_Stream, EncodedAVChunk]]:
        """One encoder call per tower for the group; if it fails, chunk by chunk, so the chunk
        that fails is the only one to."""
        backbone = group[0][0].pipeline.backbone
        profile = any(stream.pipeline.profile for stream, _ in group)
        try:
            encoded = encode_chunks(backbone, [prepared for _, prepared in group], profile)
        except BaseException as exc:  # as `_guarded`: nothing one chunk raises ends the worker
            if len(group) > 1:
                log.warning(
                    "worker: a batch of %d chunks failed to encode; encoding them one by one", len(group)
                )
                return [pair for item in group for pair in self._encode([item])]
            stream, prepared = group[0]
            log.exception("worker: stream %s: encoding chunk %d failed", stream.id, prepared.chunk.index)
            error = exc if isinstance(exc, Exception) else RuntimeError(f"encoding failed: {exc!r}")
            _call_soon(self._loop, stream.listener.chunk_failed, prepared.chunk.index, error)
            return []
        return [(stream, chunk) for (stream, _), chunk in zip(group, encoded, strict=True)]

    def _append(self, stream: _Stream, encoded: EncodedAVChunk, shared_s: float) -> None:
        """Select and prefill one encoded chunk; `shared_s` is its share of the round's encoding."""
        started = time.perf_counter()
        if self.chunk_delay_s:
            time.sleep(self.chunk_delay_s)
        report = stream.pipeline.process_encoded(encoded)
        self._deliver(stream, report, shared_s + time.perf_counter() - started)

    def _deliver(self, stream: _Stream, report: ChunkReport, seconds: float) -> None:
        session = stream.pipeline.session
        outcome = ChunkOutcome(
            report=report,
            seconds=seconds,
            cache_tokens=session.cache_tokens,
            cache_bytes=session.cache_bytes,
            session=replace(session.stats),
        )
        with self._cond:
            self._processed_total += 1
        _call_soon(self._loop, stream.listener.chunk_processed, outcome)

    # -- answers ---------------------------------------------------------------------------

    def _answer_batched(self, heads: list[_Question]) -> None:
        """Up to `decode_steps_per_round` tokens of every head question, one forward per step."""
        for _ in range(self.engine.decode_steps_per_round):
            active = [q for q in heads if self._begin_guarded(q)]
            if not active:
                return
            for group in _by_backbone([(q.session, q) for q in active]):
                questions = [q for _, q in group]
                self._guarded(
                    f"a batched step of {len(questions)} answers",
                    partial(self._decode_step, questions),
                    partial(self._abandon_all, questions),
                )

    def _decode_step(self, questions: list[_Question]) -> None:
        rows = [RaggedRow(*q.decoder.next_input(), q.session.cache) for q in questions]  # type: ignore[union-attr]
        logits = questions[0].session.backbone.forward_batch(rows)
        for question, row_logits in zip(questions, logits, strict=True):
            self._guarded(
                "a question", partial(self._accept, question, row_logits), partial(self._abandon, question)
            )

    def _abandon_all(self, questions: list[_Question], error: Exception) -> None:
        for question in questions:
            self._abandon(question, error)

    def _step_alone(self, question: _Question) -> None:
        """The serial engine: one token of one question, a forward of its own."""
        if not self._begin(question):
            return
        assert question.decoder is not None
        embeds, positions = question.decoder.next_input()
        self._accept(
            question, question.session.backbone.forward(embeds, positions, question.session.cache)[-1]
        )

    def _begin_guarded(self, question: _Question) -> bool:
        try:
            return self._begin(question)
        except Exception as exc:
            log.exception("worker: a question failed to start")
            self._abandon(question, exc)
            return False

    def _begin(self, question: _Question) -> bool:
        """Whether the question decodes now: not ended, not cancelled, taken by its session."""
        if question.done:
            return False
        if question.answer.cancel_requested:
            self._end(question, reason="cancelled")
            return False
        if question.decoder is None:
            try:
                question.decoder = question.session.start_answer(
                    question.text, question.params, question.recall
                )
            except ValueError as exc:  # the session refused the question (empty, too long)
                self._end(question, error=exc)
                return False
        return True

    def _accept(self, question: _Question, logits: Any) -> None:
        """The question's next token from its logits: post its text, end it when it is done."""
        assert question.decoder is not None
        delta = question.decoder.accept(logits)
        if delta is not None:
            if question.first_delta_s is None:
                question.first_delta_s = time.perf_counter() - question.submitted
            question.parts.append(delta)
            question.answer._post("delta", delta)
        if question.decoder.finished:
            self._end(question)

    def _end(self, question: _Question, reason: str | None = None, error: Exception | None = None) -> None:
        """Close the question's decoder here, on the worker: it cuts the cache back."""
        if question.done:
            return
        question.done = True
        decoder = question.decoder
        if decoder is not None:
            decoder.close()
        if error is not None:
            self._dequeue(question, answered=False)
            question.answer._post("error", error)
            return
        result = AnswerResult(
            text="".join(question.parts),
            generated_tokens=0 if decoder is None else decoder.stats.generated_tokens,
            context_tokens=question.session.context_tokens
            if decoder is None
            else decoder.stats.context_tokens,
            prompt_tokens=0 if decoder is None else decoder.stats.prompt_tokens,
            finish_reason=reason or ("cancelled" if decoder is None else decoder.stats.finish_reason),
            time_to_first_delta_s=question.first_delta_s,
            total_s=time.perf_counter() - question.submitted,
        )
        self._dequeue(question, answered=True)
        question.answer._post("done", result)

    def _dequeue(self, question: _Question, answered: bool) -> None:
        """Take an ended question off the head of its stream's queue (if it is still there)."""
        with self._cond:
            for stream in self._streams.values():
                if stream.questions and stream.questions[0] is question:
                    stream.questions.popleft()
                    break
            if answered:
                self._answered_total += 1

    # -- helpers ---------------------------------------------------------------------------

    def _stream(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStreamError(stream_id) from None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("start() the scheduler first")
        return self._loop

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()


def preprocess_workers(engine: EngineSettings) -> int:
    """Preprocessing threads: as configured, else the CPU count less the worker's, 1 to 4."""
    return engine.preprocess_workers or max(1, min(4, (os.cpu_count() or 2) - 1))


def _by_backbone(items: Sequence[tuple[Any, T]]) -> list[list[tuple[Any, T]]]:
    """Items grouped by the backbone their stream or session runs on (one per process in
    practice): a batch goes to one model."""
    groups: dict[int, list[tuple[Any, T]]] = {}
    for owner, item in items:
        backbone: Backbone = owner.pipeline.backbone if isinstance(owner, _Stream) else owner.backbone
        groups.setdefault(id(backbone), []).append((owner, item))
    return list(groups.values())


def _cancel(pending: _Pending) -> None:
    """A pending chunk leaves the queue: its preprocessing is dropped if it has not started."""
    if pending.prepared is not None:
        pending.prepared.cancel()


def _call_soon(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any) -> None:
    """Hand a result to the event loop; dropped when the loop is already gone (shutdown)."""
    if loop is None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
