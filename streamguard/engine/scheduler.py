"""The one inference worker: every model call of the process runs on its single thread.

Work it runs, in rounds:

1. calls (`await scheduler.call(fn)`: stream set-up such as the prefix prefill, or a live
   stream's new pruning and sampling settings, `reconfigure`),
2. one step of the head question of every stream that has questions (a step is one
   `next()` on `StreamSession.ask`, i.e. one generated token), oldest streams first,
3. one chunk prefill (`ChunkPipeline.process`), taken round-robin from the streams that have
   pending chunks and no question in flight.

So a question waits for at most the chunk prefill that is running when it arrives, and
between two of its tokens at most one chunk prefill runs: answers stay fast while streams keep
flowing. A stream's own chunks wait while it answers (the question sits at the end of its
cache until it is cut off again). Each stream's chunks are processed in arrival order.

Backpressure: each stream holds at most `max_pending_chunks` chunks waiting for the worker.
When one more arrives the oldest pending chunk is shed (it never reaches the model) and
counted; the newest chunks are the ones a live question is about. A stream takes at most
`max_questions_per_stream` questions waiting or answering; one more is `TooManyQuestionsError`.

Every call, question step and chunk runs guarded: whatever one raises fails that item alone
(the caller hears the error, it is logged) and the worker serves on. `alive` says whether the
worker thread runs.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from streamguard.engine.session import Recall, SamplingParams, SessionStats, StreamSession

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class SchedulerStats:
    streams: int
    pending_chunks: int
    questions_waiting: int
    chunks_processed: int
    chunks_shed: int
    questions_answered: int
    alive: bool  # the worker thread runs


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
    generator: Iterator[str] | None = None
    parts: list[str] = field(default_factory=list)
    first_delta_s: float | None = None
    done: bool = False


@dataclass
class _Stream:
    id: str
    pipeline: ChunkPipeline
    listener: StreamListener
    pending: deque[AVChunk] = field(default_factory=deque)
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
    ):
        """`max_questions_per_stream` None: a stream takes any number of questions."""
        if max_pending_chunks < 1:
            raise ValueError("max_pending_chunks must be at least 1")
        if max_questions_per_stream is not None and max_questions_per_stream < 1:
            raise ValueError("max_questions_per_stream must be at least 1")
        self.max_pending_chunks = max_pending_chunks
        self.max_questions_per_stream = max_questions_per_stream
        if chunk_delay_s is None:
            chunk_delay_s = float(os.environ.get(CHUNK_DELAY_ENV, "0") or 0)
        self.chunk_delay_s = chunk_delay_s
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
            stream.pending.clear()
            self._closing.extend(stream.questions)
            self._cond.notify()

    def submit_chunk(self, stream_id: str, chunk: AVChunk) -> None:
        """Queue a chunk; never blocks. Over the bound, the oldest pending chunk is shed."""
        shed: list[AVChunk] = []
        with self._cond:
            stream = self._stream(stream_id)
            while len(stream.pending) >= self.max_pending_chunks:
                shed.append(stream.pending.popleft())
            stream.pending.append(chunk)
            stream.shed += len(shed)
            self._shed_total += len(shed)
            self._cond.notify()
        for dropped in shed:
            stream.listener.chunk_shed(dropped)

    def queue_stats(self, stream_id: str) -> QueueStats:
        with self._cond:
            stream = self._stream(stream_id)
            return QueueStats(len(stream.pending), stream.shed)

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
                picked = self._next_chunk()
            for question in closing:
                self._end_guarded(question, StreamEndedError("the stream ended"))
            for run in calls:
                run()
            for question in heads:
                self._guarded("a question", partial(self._step, question), partial(self._abandon, question))
            if picked is not None:
                stream, chunk = picked
                self._guarded(
                    f"stream {stream.id}: chunk {chunk.index}",
                    partial(self._process, stream, chunk),
                    partial(_call_soon, self._loop, stream.listener.chunk_failed, chunk.index),
                )
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
        """End a question whose handling failed: off its stream, with the error."""
        question.done = True
        self._dequeue(question, answered=False)
        question.answer._post("error", error)

    def _has_work(self) -> bool:
        return (
            self._stopping
            or bool(self._closing or self._calls)
            or any(s.questions or s.pending for s in self._streams.values())
        )

    def _next_chunk(self) -> tuple[_Stream, AVChunk] | None:
        """The next stream in turn with a pending chunk and no question in flight (lock held)."""
        for _ in range(len(self._turns)):
            stream = self._streams[self._turns[0]]
            self._turns.rotate(-1)
            if stream.pending and not stream.questions:
                return stream, stream.pending.popleft()
        return None

    def _process(self, stream: _Stream, chunk: AVChunk) -> None:
        """Prefill one chunk; a failure is the guard's to report (`chunk_failed`)."""
        started = time.perf_counter()
        if self.chunk_delay_s:
            time.sleep(self.chunk_delay_s)
        session = stream.pipeline.session
        report = stream.pipeline.process(chunk)
        outcome = ChunkOutcome(
            report=report,
            seconds=time.perf_counter() - started,
            cache_tokens=session.cache_tokens,
            cache_bytes=session.cache_bytes,
            session=replace(session.stats),
        )
        with self._cond:
            self._processed_total += 1
        _call_soon(self._loop, stream.listener.chunk_processed, outcome)

    def _step(self, question: _Question) -> None:
        """Advance a question by one delta, or end it (cancelled, finished or failed)."""
        if question.done:
            return
        if question.answer.cancel_requested:
            self._end(question, reason="cancelled")
            return
        try:
            if question.generator is None:
                question.generator = question.session.ask(question.text, question.params, question.recall)
            delta = next(question.generator)
        except StopIteration:
            self._end(question)
            return
        except Exception as exc:
            if not isinstance(exc, ValueError):  # ValueError: the session rejected the question
                log.exception("question failed")
            self._end(question, error=exc)
            return
        if question.first_delta_s is None:
            question.first_delta_s = time.perf_counter() - question.submitted
        question.parts.append(delta)
        question.answer._post("delta", delta)

    def _end(self, question: _Question, reason: str | None = None, error: Exception | None = None) -> None:
        """Close the question's generator here, on the worker: its `finally` cuts the cache back."""
        if question.done:
            return
        question.done = True
        started = question.generator is not None
        if question.generator is not None:
            question.generator.close()
        if error is not None:
            self._dequeue(question, answered=False)
            question.answer._post("error", error)
            return
        stats = question.session.stats.last_answer
        result = AnswerResult(
            text="".join(question.parts),
            generated_tokens=stats.generated_tokens if started else 0,
            context_tokens=stats.context_tokens if started else question.session.context_tokens,
            prompt_tokens=stats.prompt_tokens if started else 0,
            finish_reason=reason or stats.finish_reason,
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
