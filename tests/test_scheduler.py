"""The inference worker on the tiny real model: order, fairness, shedding, question priority,
cancellation. The test hook `chunk_delay_s` slows the real model down; nothing is faked."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
import torch
from service_helpers import eventually, random_chunks, tiny_settings

from streamguard.backbones import load_backbone
from streamguard.config import EngineSettings
from streamguard.engine import kv
from streamguard.engine.pipeline import ChunkPipeline, create_pipeline
from streamguard.engine.scheduler import (
    Answer,
    AnswerResult,
    ChunkOutcome,
    Scheduler,
    StreamEndedError,
    TooManyQuestionsError,
)
from streamguard.engine.session import EmptyQuestionError, QuestionTooLongError
from streamguard.ingest.chunker import AVChunk

QUESTION = "What is happening?"


@pytest.fixture(scope="module")
def settings(checkpoint):
    return tiny_settings(checkpoint)


@pytest.fixture(scope="module")
def backbone(settings):
    return load_backbone(settings.model, settings.chunk)


class Recorder:
    """A stream listener that writes what happens, in the order the loop hears it, to `log`."""

    def __init__(self, name: str, log: list[tuple[str, str, int]]):
        self.name = name
        self.log = log
        self.failures: list[Exception] = []

    def chunk_processed(self, outcome: ChunkOutcome) -> None:
        self.log.append(("chunk", self.name, outcome.report.index))

    def chunk_failed(self, index: int, error: Exception) -> None:
        self.failures.append(error)

    def chunk_shed(self, chunk: AVChunk) -> None:
        self.log.append(("shed", self.name, chunk.index))


def add_streams(scheduler: Scheduler, settings, backbone, names: str, log: list) -> dict[str, ChunkPipeline]:
    pipelines = {}
    for name in names:
        pipelines[name] = create_pipeline(backbone, settings)
        scheduler.register(name, pipelines[name], Recorder(name, log))
    return pipelines


def processed(log: list, name: str) -> list[int]:
    return [index for kind, stream, index in log if kind == "chunk" and stream == name]


async def feed(scheduler: Scheduler, names: str, chunks: list[AVChunk], interval_s: float = 0.01) -> None:
    """Keep submitting chunks faster than the slowed worker takes them."""
    for chunk in chunks:
        for name in names:
            scheduler.submit_chunk(name, chunk)
        await asyncio.sleep(interval_s)


async def answered(answer: Answer) -> AnswerResult:
    async for _ in answer:
        pass
    assert answer.result is not None
    return answer.result


async def test_chunks_keep_their_order_and_streams_take_turns(settings, backbone):
    scheduler = Scheduler(max_pending_chunks=8)
    log: list = []
    pipelines = add_streams(scheduler, settings, backbone, "ab", log)
    chunks = random_chunks(6)
    # queued before the worker starts, so the turn order is the whole story
    for chunk in chunks[:3]:
        scheduler.submit_chunk("a", chunk)
    for chunk in chunks[3:]:
        scheduler.submit_chunk("b", chunk)
    # ... and preprocessed (off the worker), so every chunk is model-ready when it starts
    await eventually(
        lambda: all(scheduler.queue_stats(s).ready == 3 for s in "ab"), "six chunks preprocessed"
    )
    scheduler.start()
    try:
        await eventually(lambda: len(log) == 6, "six chunks")
    finally:
        await scheduler.stop()
    assert log == [("chunk", s, i) for s, i in [("a", 0), ("b", 3), ("a", 1), ("b", 4), ("a", 2), ("b", 5)]]
    assert [c.index for c in pipelines["a"].session.chunks] == [0, 1, 2]
    assert [c.index for c in pipelines["b"].session.chunks] == [3, 4, 5]
    assert scheduler.stats().chunks_processed == 6 and scheduler.stats().chunks_shed == 0


async def test_a_slow_worker_sheds_the_oldest_pending_chunks(settings, backbone):
    scheduler = Scheduler(max_pending_chunks=2, chunk_delay_s=0.2)
    log: list = []
    pipelines = add_streams(scheduler, settings, backbone, "a", log)
    scheduler.start()
    depths = []
    try:
        for chunk in random_chunks(8):
            scheduler.submit_chunk("a", chunk)
            depths.append(scheduler.queue_stats("a").depth)
        await eventually(lambda: len(log) == 8, "every chunk processed or shed")
    finally:
        await scheduler.stop()
    done, shed = processed(log, "a"), [i for kind, _, i in log if kind == "shed"]
    assert max(depths) <= 2  # memory stays bounded
    assert shed and sorted(done + shed) == list(range(8))
    assert done == sorted(done) and done[-2:] == [6, 7]  # the newest chunks are never shed
    assert shed == sorted(shed)  # always the oldest pending one
    assert scheduler.queue_stats("a").shed == len(shed) == scheduler.stats().chunks_shed
    assert [c.index for c in pipelines["a"].session.chunks] == done


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "serial"])
async def test_a_question_is_served_between_chunk_prefills_while_chunks_keep_coming(
    settings, backbone, batching
):
    # one token a round, so an 8-token answer spans rounds with chunks between them
    engine = EngineSettings(batching=batching, decode_steps_per_round=1)
    scheduler = Scheduler(max_pending_chunks=4, chunk_delay_s=0.05, engine=engine)
    log: list = []
    add_streams(scheduler, settings, backbone, "ab", log)
    scheduler.start()
    # faster than the worker, but slow enough that a chunk outlives its preprocessing in the queue
    producer = asyncio.create_task(feed(scheduler, "ab", random_chunks(400), interval_s=0.06))
    try:
        await eventually(lambda: processed(log, "a"), "a first chunk of stream a")
        log.append(("ask", "a", -1))
        answer = scheduler.ask("a", QUESTION, max_tokens=8)
        deltas = []
        async for delta in answer:
            deltas.append(delta)
            log.append(("delta", "a", len(deltas)))
        log.append(("done", "a", -1))
        asked_at = log.index(("ask", "a", -1))
        during = log[asked_at : log.index(("done", "a", -1))]
        await eventually(
            lambda: len(processed(log[asked_at:], "a")) >= 2, "stream a to resume after its answer"
        )
        assert not producer.done()  # the answer came while chunks kept arriving
    finally:
        producer.cancel()
        await scheduler.stop()
    result = answer.result
    assert result is not None and result.text == "".join(deltas) and deltas
    assert result.finish_reason in ("stop", "length") and result.generated_tokens >= len(deltas)
    first_delta = during.index(("delta", "a", 1))
    chunks_during = [(at, event) for at, event in enumerate(during) if event[0] == "chunk"]
    # the asking stream's chunks wait (its cache holds the question), but for one the worker
    # had already taken when the question came; the other stream flows
    own = [at for at, (_, stream, _) in chunks_during if stream == "a"]
    assert len(own) <= 1 and all(at < first_delta for at in own)
    assert any(stream == "b" for _, (_, stream, _) in chunks_during)
    # priority: each round decodes one token of the answer and takes at most one chunk of each
    # stream, so after its first delta the other stream gets at most one chunk per token (and
    # one for the round that found the end)
    after = [event for event in during[first_delta:] if event[0] == "chunk"]
    assert len(after) <= result.generated_tokens + 1


async def test_cancel_stops_at_the_next_token_and_leaves_the_cache_as_it_was(settings, backbone):
    scheduler = Scheduler(max_pending_chunks=4, chunk_delay_s=0.1)
    log: list = []
    pipelines = add_streams(scheduler, settings, backbone, "ab", log)
    session = pipelines["a"].session
    scheduler.start()
    producer = None
    try:
        for chunk in random_chunks(2, seed=1):
            scheduler.submit_chunk("a", chunk)
        await eventually(lambda: len(processed(log, "a")) == 2, "stream a's chunks")
        full = [delta async for delta in scheduler.ask("a", QUESTION)]
        assert len(full) >= 3
        before, tokens_before = kv.snapshot(session.cache), session.cache_tokens

        # stream b keeps the worker busy, so the cancel lands between two of the answer's tokens
        producer = asyncio.create_task(feed(scheduler, "b", random_chunks(400, seed=2)))
        await eventually(lambda: processed(log, "b"), "stream b to flow")
        answer = scheduler.ask("a", QUESTION)
        first = await anext(answer)
        answer.cancel()
        rest = [delta async for delta in answer]
        assert answer.result is not None and answer.result.finish_reason == "cancelled"
        assert len([first, *rest]) < len(full) and first == full[0]
        assert session.cache_tokens == tokens_before
        after = kv.snapshot(session.cache)
        assert all(
            torch.equal(k0, k1) and torch.equal(v0, v1)
            for (k0, v0), (k1, v1) in zip(before, after, strict=True)
        )
        # the stream's context is what it was: the same question gets the same answer
        assert [delta async for delta in scheduler.ask("a", QUESTION)] == full
    finally:
        if producer is not None:
            producer.cancel()
        await scheduler.stop()


async def test_rejected_questions_and_removed_streams_end_the_answer_with_an_error(settings, backbone):
    scheduler = Scheduler(max_pending_chunks=4, chunk_delay_s=0.1)
    log: list = []
    add_streams(scheduler, settings, backbone, "ab", log)
    scheduler.start()
    producer = asyncio.create_task(feed(scheduler, "b", random_chunks(400, seed=3)))
    try:
        with pytest.raises(QuestionTooLongError):
            await anext(scheduler.ask("a", "x" * (settings.session.max_question_chars + 1)))
        with pytest.raises(EmptyQuestionError):
            await anext(scheduler.ask("a", "   "))
        answer = scheduler.ask("a", QUESTION)
        await anext(answer)
        scheduler.unregister("a")
        with pytest.raises(StreamEndedError):
            async for _ in answer:
                pass
        assert scheduler.stats().streams == 1
    finally:
        producer.cancel()
        await scheduler.stop()


async def test_a_stream_takes_a_bounded_number_of_questions(settings, backbone):
    scheduler = Scheduler(max_pending_chunks=4, max_questions_per_stream=2)
    log: list = []
    add_streams(scheduler, settings, backbone, "ab", log)
    scheduler.start()
    gate = threading.Event()
    try:
        held = asyncio.create_task(scheduler.call(gate.wait))  # the worker waits: nothing is answered
        await asyncio.sleep(0)  # the call is queued
        first, second = scheduler.ask("a", QUESTION, max_tokens=2), scheduler.ask("a", QUESTION, max_tokens=2)
        with pytest.raises(TooManyQuestionsError, match="2 questions waiting or answering"):
            scheduler.ask("a", QUESTION)
        other = scheduler.ask("b", QUESTION, max_tokens=2)  # the bound is per stream
        gate.set()
        assert await held is True
        for answer in (first, second, other):
            assert (await answered(answer)).finish_reason in ("stop", "length")
        await answered(scheduler.ask("a", QUESTION, max_tokens=2))  # answered questions free their places
    finally:
        gate.set()
        await scheduler.stop()


async def test_whatever_one_call_raises_fails_that_call_and_the_worker_serves_on(settings, backbone):
    scheduler = Scheduler(max_pending_chunks=4)
    log: list = []
    add_streams(scheduler, settings, backbone, "a", log)
    assert not scheduler.alive
    scheduler.start()
    try:
        # SystemExit (what a library's sys.exit() raises) is no Exception: it ended the worker thread
        with pytest.raises(RuntimeError, match="SystemExit"):
            await asyncio.wait_for(scheduler.call(sys.exit, 3), 60)
        assert scheduler.alive and scheduler.stats().alive
        scheduler.submit_chunk("a", random_chunks(1)[0])
        await eventually(lambda: processed(log, "a") == [0], "the chunk")
        assert (await answered(scheduler.ask("a", QUESTION, max_tokens=2))).finish_reason in (
            "stop",
            "length",
        )
    finally:
        await scheduler.stop()
    assert not scheduler.alive and not scheduler.stats().alive
