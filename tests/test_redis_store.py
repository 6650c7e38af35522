"""The Redis store on a real redis-server (started by the test on a free port): records, the
answer log, counters, leases between two workers, outages, and the service riding one out."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pytest
from redis_helpers import redis_server
from service_helpers import eventually, free_port, receive_until, serve, tiny_settings, wait_until

from streamguard.backbones import load_backbone
from streamguard.cli import main
from streamguard.cluster import AnswerRecord, StoreUnavailableError, StreamRecord, open_store
from streamguard.cluster.fallback import FallbackStore
from streamguard.cluster.redis_store import RedisStore
from streamguard.config import ClusterSettings
from streamguard.engine.scheduler import Scheduler
from streamguard.ingest.files import FileSource
from streamguard.service import create_app
from streamguard.service.metrics import ServiceMetrics
from streamguard.service.protocol import StreamKind
from streamguard.service.streams import StreamRegistry
from streamguard.vocabulary import StreamState

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parents[1]
BOUND_S = 20.0  # the longest any wait here may take


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
def cluster(server) -> ClusterSettings:
    """Settings on the module's server, under a key prefix of this test's own."""
    return ClusterSettings(redis_url=server.url, key_prefix=f"test-{uuid.uuid4().hex[:8]}:", timeout_s=2.0)


def stream_record(
    stream_id: str, state: str = "live", kind: str = "rtsp", worker: str = "w1"
) -> StreamRecord:
    return StreamRecord(
        id=stream_id,
        kind=kind,
        source="rtsp://camera.local:8554/door",
        state=state,
        error=None,
        created=time.time(),
        worker=worker,
    )


def answer_record(stream_id: str, n: int) -> AnswerRecord:
    return AnswerRecord(
        stream_id=stream_id,
        question_id=f"q{n}",
        question=f"question {n}: who is at the door?",
        answer=f"answer {n}",
        finish_reason="stop",
        generated_tokens=n,
        time_to_first_delta_ms=None if n % 2 else 12.5,
        at=1000.0 + n,
    )


# -- round trips -------------------------------------------------------------------------------


async def test_stream_records_round_trip_and_finished_ones_expire(server, cluster):
    store = await RedisStore.connect(cluster, "w1")
    try:
        live = stream_record("s1")
        live.error = 'a "quoted" = error\nover two lines'
        await store.put_stream(live)
        assert await store.get_stream("s1") == live
        assert await store.get_stream("nope") is None

        ended = live.model_copy(update={"state": StreamState.ENDED})
        await store.put_stream(ended)
        assert await store.get_stream("s1") == ended
        with server.client() as redis:
            assert 0 < redis.pttl(f"{cluster.key_prefix}stream:s1") <= cluster.finished_ttl_s * 1000
            assert redis.zscore(f"{cluster.key_prefix}active", "s1") is None
            assert all(key.startswith(cluster.key_prefix) for key in redis.keys(f"{cluster.key_prefix}*"))
    finally:
        await store.aclose()


async def test_answer_log_keeps_order_and_its_cap(cluster):
    store = await RedisStore.connect(cluster.model_copy(update={"answer_log_max": 3}), "w1")
    try:
        await store.put_stream(stream_record("s1"))
        for n in range(5):
            await store.log_answer(answer_record("s1", n))
        assert await store.answers("s1", 10) == [answer_record("s1", n) for n in (2, 3, 4)]
        assert await store.answers("s1", 2) == [answer_record("s1", n) for n in (3, 4)]
        assert await store.answers("s1", 0) == []
        assert await store.answers("other", 10) == []
    finally:
        await store.aclose()


async def test_counters_replace_the_last_snapshot(cluster):
    store = await RedisStore.connect(cluster, "w1")
    try:
        assert await store.counters("s1") is None
        await store.put_counters("s1", {"chunks_processed": 3, "compression": 0.5, "real_time_factor": None})
        first = await store.counters("s1")
        assert first is not None and first["chunks_processed"] == 3 and first["compression"] == 0.5
        assert "real_time_factor" not in first and first["at"] > 0
        await store.put_counters("s1", {"chunks_processed": 4})
        second = await store.counters("s1")
        assert second is not None and second["chunks_processed"] == 4 and "compression" not in second
    finally:
        await store.aclose()


# -- leases between two workers ----------------------------------------------------------------


async def test_a_lease_is_held_by_one_worker_and_released_only_by_it(cluster):
    one = await RedisStore.connect(cluster, "worker-1")
    two = await RedisStore.connect(cluster, "worker-2")
    try:
        assert await one.acquire_lease("s1")
        assert await one.acquire_lease("s1")  # again: it is this worker's already
        assert not await two.acquire_lease("s1")
        assert await two.renew_leases(["s1"]) == ["s1"]  # never extends a lease it does not hold
        assert await one.renew_leases(["s1"]) == []
        await two.release_lease("s1")
        assert await one.lease_holder("s1") == "worker-1"
        await one.release_lease("s1")
        assert await two.acquire_lease("s1")
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_dead_workers_stream_is_claimed_by_exactly_one_other(cluster):
    short = cluster.model_copy(update={"lease_ttl_s": 0.3})
    dead = await RedisStore.connect(short, "dead")
    one = await RedisStore.connect(short, "worker-1")
    two = await RedisStore.connect(short, "worker-2")
    try:
        for record in (
            stream_record("camera", worker="dead"),
            stream_record("webcam", kind="webrtc", worker="dead"),
            stream_record("done", state="ended", worker="dead"),
        ):
            await dead.put_stream(record)
            assert await dead.acquire_lease(record.id)
        assert await one.expired_streams() == []  # leased: nothing to claim

        # the dead worker stops heartbeating; its leases lapse
        expired = await eventually(lambda: one.expired_streams("rtsp"), "the camera's lease to lapse")
        assert [record.id for record in expired] == ["camera"]
        assert {r.id for r in await one.expired_streams()} == {"camera", "webcam"}  # not the ended one

        claims = await asyncio.gather(one.claim_stream("camera"), two.claim_stream("camera"))
        winners = [claim for claim in claims if claim is not None]
        assert len(winners) == 1
        winner = winners[0].worker
        assert winner in ("worker-1", "worker-2")
        assert (await one.get_stream("camera")).worker == winner
        assert await one.lease_holder("camera") == winner
        assert await one.claim_stream("done") is None  # finished streams are not claimable
        assert [r.id for r in await one.expired_streams("rtsp")] == []

        # the dead worker wakes up: its lease is gone for good
        assert await dead.renew_leases(["camera"]) == ["camera"]
        assert await one.lease_holder("camera") == winner
    finally:
        for store in (dead, one, two):
            await store.aclose()


async def test_a_lapsed_lease_nobody_claimed_is_taken_back_on_renewal(cluster):
    store = await RedisStore.connect(cluster.model_copy(update={"lease_ttl_s": 0.2}), "worker-1")
    try:
        assert await store.acquire_lease("s1")
        await eventually(lambda: _lapsed(store, "s1"), "the lease to lapse")
        assert await store.renew_leases(["s1"]) == []
        assert await store.lease_holder("s1") == "worker-1"
    finally:
        await store.aclose()


async def _lapsed(store: RedisStore, stream_id: str) -> bool:
    return await store.lease_holder(stream_id) is None


# -- outages -----------------------------------------------------------------------------------


async def test_an_answer_is_logged_even_if_its_caller_is_cancelled(cluster):
    store = await open_store(cluster, worker="worker-1")
    try:
        await store.put_stream(stream_record("s1", worker="worker-1"))
        expected = [answer_record("s1", n) for n in range(2)]
        writes = [asyncio.create_task(store.log_answer(record)) for record in expected]
        await asyncio.sleep(0)  # both start: the first writes, the second waits for its turn
        writes[1].cancel()  # its client left
        await eventually(lambda: _logged(store, "s1", expected), "both answers in Redis")
    finally:
        await store.aclose()


async def _logged(store: FallbackStore, stream_id: str, expected: list[AnswerRecord]) -> bool:
    return await store.redis.answers(stream_id, 10) == expected


async def test_a_stalled_redis_times_out_and_buffered_answers_are_flushed_once(server, cluster, caplog):
    settings = cluster.model_copy(update={"timeout_s": 0.2, "retry_interval_s": 0.05})
    store = await open_store(settings, worker="worker-1")
    assert isinstance(store, FallbackStore)
    caplog.set_level(logging.WARNING, logger="streamguard.cluster")
    try:
        await store.put_stream(stream_record("s1", worker="worker-1"))
        await store.log_answer(answer_record("s1", 0))
        with server.client() as redis:
            redis.client_pause(1500)  # every other client's command waits: Redis stalls, data kept
        await store.log_answer(answer_record("s1", 1))  # times out: buffered
        await store.log_answer(answer_record("s1", 2))  # Redis skipped: buffered
        health = store.health()
        assert not health.up and health.buffered_answers == 2
        assert "did not answer" in health.reason and server.url in health.reason
        assert await store.answers("s1", 10) == [answer_record("s1", n) for n in range(3)]  # from memory
        await eventually(lambda: _up(store), "Redis to answer again")
        assert await store.answers("s1", 10) == [answer_record("s1", n) for n in range(3)]  # no twins
        downs = [r for r in caplog.records if r.getMessage().startswith("store.down")]
        assert len(downs) == 1
    finally:
        await store.aclose()


async def _up(store: FallbackStore) -> bool:
    return store.health().up


async def test_an_answer_whose_write_timed_out_but_landed_is_not_written_twice(server, cluster):
    # the probe waits longer than the pause, so the late write lands before Redis is used again
    store = await open_store(
        cluster.model_copy(update={"timeout_s": 0.2, "retry_interval_s": 1.0}), worker="worker-1"
    )
    late = await RedisStore.connect(cluster.model_copy(update={"timeout_s": 10.0}), "worker-1")
    try:
        await store.put_stream(stream_record("s1", worker="worker-1"))
        await store.log_answer(answer_record("s1", 0))
        with server.client() as redis:
            redis.client_pause(300)
        landing = asyncio.create_task(late.log_answer(answer_record("s1", 1)))  # held by the pause
        await store.log_answer(answer_record("s1", 1))  # times out here, yet lands through `late`
        await store.log_answer(answer_record("s1", 2))
        await landing
        await eventually(lambda: _up(store), "Redis to answer again")
        assert await store.answers("s1", 10) == [answer_record("s1", n) for n in range(3)]
    finally:
        await late.aclose()
        await store.aclose()


async def test_full_outage_buffer_drops_the_oldest_and_says_so(server, cluster):
    settings = cluster.model_copy(update={"timeout_s": 0.2, "retry_interval_s": 0.05, "outage_buffer_max": 2})
    store = await open_store(settings, worker="worker-1")
    try:
        await store.put_stream(stream_record("s1", worker="worker-1"))
        with server.client() as redis:
            redis.client_pause(1500)
        for n in range(3):
            await store.log_answer(answer_record("s1", n))
        health = store.health()
        assert health.buffered_answers == 2 and "1 buffered answers dropped" in health.reason
        await eventually(lambda: _up(store), "Redis to answer again")
        assert await store.answers("s1", 10) == [answer_record("s1", n) for n in (1, 2)]
    finally:
        await store.aclose()


async def test_answers_buffered_in_an_outage_get_one_last_try_when_the_store_closes(server, cluster):
    # the probe would wait a minute: only the close can write them
    store = await open_store(
        cluster.model_copy(update={"timeout_s": 0.2, "retry_interval_s": 60.0}), "worker-1"
    )
    await store.put_stream(stream_record("s1", worker="worker-1"))
    with server.client() as redis:
        redis.client_pause(300)
    for n in range(2):
        await store.log_answer(answer_record("s1", n))
    assert store.health().buffered_answers == 2
    await asyncio.sleep(0.5)  # the pause is over, the probe still asleep
    await store.aclose()
    reader = await RedisStore.connect(cluster, "reader")
    try:
        assert await reader.answers("s1", 10) == [answer_record("s1", n) for n in range(2)]
    finally:
        await reader.aclose()


async def test_an_unreachable_redis_url_at_startup_is_a_clear_error_without_the_password():
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailableError) as caught:
        await open_store(ClusterSettings(redis_url=url, timeout_s=2.0))
    message = str(caught.value)
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in message
    assert "hunter2" not in message and "cluster.redis_url" in message and "unset it" in message


def test_serve_refuses_an_unreachable_redis_before_loading_a_model(monkeypatch, capsys):
    monkeypatch.setenv("STREAMGUARD_CLUSTER__REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["serve", "--config", "tiny", "--model", "/nonexistent/checkpoint"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "STREAMGUARD_CLUSTER__REDIS_URL" in err


# -- the service riding out an outage ------------------------------------------------------------


def ask(service, stream_id: str, question_id: str) -> dict:
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ws.send(f'{{"type": "question.ask", "id": "{question_id}", "text": "What do you see?"}}')
        events = receive_until(ws, lambda e: e["type"] in ("answer.done", "error"))
    assert events[-1]["type"] == "answer.done", events[-1]
    return events[-1]


def store_up_gauge(service) -> float:
    response = service.http.get("/metrics")
    response.raise_for_status()
    line = next(x for x in response.text.splitlines() if x.startswith("streamguard_store_up "))
    return float(line.split()[1])


def logged(service, stream_id: str) -> dict | None:
    """The stream's answer log once it holds an answer."""
    body = service.http.get(f"/v1/streams/{stream_id}/answers").json()
    return body if body.get("answers") else None


def degraded(service) -> dict | None:
    health = service.http.get("/healthz").json()
    return health if health["status"] == "degraded" else None


def test_the_service_rides_out_a_redis_crash_and_resyncs(checkpoint, clip, tmp_path):
    video = clip("long.mp4", 40.0, fps=4)  # outlives the test: deleted at its end
    with redis_server(tmp_path) as redis_process:
        settings = tiny_settings(checkpoint, allow_file_sources=True)
        settings.cluster = ClusterSettings(
            redis_url=redis_process.url, lease_ttl_s=1.5, timeout_s=1.0, retry_interval_s=0.1
        )
        prefix = settings.cluster.key_prefix
        with serve(create_app(settings)) as service, redis_process.client() as redis:
            created = service.http.post(
                "/v1/streams", json={"source": "file", "path": str(video), "realtime": True}
            )
            assert created.status_code == 201, created.text
            stream_id = created.json()["id"]
            wait_until(lambda: service.stream(stream_id)["stats"]["chunks_processed"] >= 1, "a chunk")
            worker = redis.hget(f"{prefix}stream:{stream_id}", "worker").strip('"')
            wait_until(lambda: redis.get(f"{prefix}lease:{stream_id}") == worker, "the stream's lease")
            wait_until(lambda: redis.hget(f"{prefix}counters:{stream_id}", "chunks_processed"), "counters")
            ask(service, stream_id, "before")
            wait_until(lambda: redis.xlen(f"{prefix}answers:{stream_id}") == 1, "the answer in Redis")
            assert service.http.get("/healthz").json()["status"] == "ok"
            assert store_up_gauge(service) == 1.0

            redis_process.kill()
            ask(service, stream_id, "during-1")  # answered; its log entry waits for Redis
            processed = service.stream(stream_id)["stats"]["chunks_processed"]
            health = wait_until(lambda: degraded(service), "healthz to say degraded")
            assert redis_process.url in health["store"]["reason"] and not health["store"]["up"]
            assert store_up_gauge(service) == 0.0
            ask(service, stream_id, "during-2")
            wait_until(
                lambda: service.stream(stream_id)["stats"]["chunks_processed"] > processed,
                "the stream to keep running without Redis",
            )
            log = service.http.get(f"/v1/streams/{stream_id}/answers").json()  # from memory
            assert [a["question_id"] for a in log["answers"]] == ["before", "during-1", "during-2"]

            redis_process.start()  # the same port, empty: it lost everything
            wait_until(lambda: service.http.get("/healthz").json()["status"] == "ok", "the store to be back")
            assert store_up_gauge(service) == 1.0
            assert redis.hget(f"{prefix}stream:{stream_id}", "state") == '"live"'
            entries = redis.xrange(f"{prefix}answers:{stream_id}")
            assert [AnswerRecord.model_validate_json(f["answer"]).question_id for _, f in entries] == [
                "before",
                "during-1",
                "during-2",
            ]
            # the heartbeat takes the stream's lapsed lease back and publishes counters again
            wait_until(lambda: redis.get(f"{prefix}lease:{stream_id}") == worker, "the lease back")
            wait_until(lambda: redis.exists(f"{prefix}counters:{stream_id}"), "counters back")

            assert service.http.delete(f"/v1/streams/{stream_id}").status_code == 200
            assert redis.hget(f"{prefix}stream:{stream_id}", "state") == '"ended"'
            assert redis.get(f"{prefix}lease:{stream_id}") is None
            assert service.http.get(f"/v1/streams/{stream_id}/answers").json()["answers"][-1][
                "question_id"
            ] == ("during-2")


def test_a_second_worker_reads_the_first_ones_streams_and_answers(checkpoint, clip, tmp_path):
    with redis_server(tmp_path) as redis_process:
        settings = tiny_settings(checkpoint, allow_file_sources=True)
        settings.cluster = ClusterSettings(redis_url=redis_process.url)
        backbone = load_backbone(settings.model, settings.chunk)  # one model for both workers
        with serve(create_app(settings, backbone)) as first, serve(create_app(settings, backbone)) as second:
            created = first.http.post(
                "/v1/streams", json={"source": "file", "path": str(clip("short.mp4", 2.0)), "realtime": False}
            )
            assert created.status_code == 201, created.text
            stream_id = created.json()["id"]
            ask(first, stream_id, "q1")
            log = wait_until(lambda: logged(second, stream_id), "the answer in the second worker's view")
            assert log["stream"]["id"] == stream_id and log["answers"][0]["question_id"] == "q1"
            assert (
                second.http.get(f"/v1/streams/{stream_id}").status_code == 404
            )  # questions go to its worker


async def test_a_stream_whose_lease_or_record_cannot_be_written_leaves_nothing_behind(
    checkpoint, clip, tmp_path
):
    settings = tiny_settings(checkpoint, max_streams_per_token=1)
    scheduler = Scheduler(settings.service.max_pending_chunks)
    scheduler.start()
    metrics = ServiceMetrics()
    with redis_server(tmp_path) as redis_process:
        # Redis itself, without the fallback to memory: a store whose writes fail
        store = await RedisStore.connect(ClusterSettings(redis_url=redis_process.url, timeout_s=1.0), "w1")
        registry = StreamRegistry(
            settings, load_backbone(settings.model, settings.chunk), scheduler, metrics, store
        )
        source = FileSource(clip("short.mp4", 2.0), settings.chunk)
        try:
            redis_process.kill()
            with pytest.raises(StoreUnavailableError):
                await registry.open(StreamKind.FILE, source, "a file", owner="token")
            assert registry.all() == [] and scheduler.stats().streams == 0
            assert 'stream="' not in metrics.exposition().decode()
            redis_process.start()
            # the token's one slot is free again: the failed stream holds nothing
            stream = await registry.open(StreamKind.FILE, source, "a file", owner="token")
            assert [s.id for s in registry.all()] == [stream.id]
        finally:
            await registry.close()
            await scheduler.stop()
            await store.aclose()
