"""Two workers on one real Redis: when the worker running an RTSP camera dies (kill -9), the
other one claims its lapsed lease and runs the camera on under the same stream id; a stream that
cannot move (a file, a WebRTC peer) is recorded as lost. Worker A is `streamguard serve` in a
process of its own, worker B this test's process; the camera is GStreamer's RTSP server."""

from __future__ import annotations

import json
import time

import pytest
from redis_helpers import redis_server
from rtsp_helpers import rtsp_camera
from service_helpers import TOKEN, receive_until, serve, serve_process, tiny_settings, wait_until

from streamguard.backbones import load_backbone
from streamguard.cluster import Heartbeat
from streamguard.cluster.redis_store import RedisStore
from streamguard.cluster.takeover import TakeOver
from streamguard.config import ClusterSettings
from streamguard.engine.scheduler import Scheduler
from streamguard.ingest.files import FileSource
from streamguard.ingest.synthetic import write_clip
from streamguard.service import create_app
from streamguard.service.auth import owner_of
from streamguard.service.metrics import ServiceMetrics
from streamguard.service.protocol import StreamKind
from streamguard.service.streams import StreamRegistry

pytestmark = [pytest.mark.redis, pytest.mark.rtsp]

LEASE_TTL_S = 2.0
SECRET = "s3cret-camera-password"


def camera_url_with_credentials(url: str) -> str:
    # The test camera asks for no password; ffmpeg sends credentials only when challenged.
    return url.replace("rtsp://", f"rtsp://viewer:{SECRET}@", 1)


def metric(service, name: str) -> float | None:
    for line in service.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_a_dead_workers_camera_runs_on_in_another_worker_and_its_file_stream_is_marked_lost(
    checkpoint, tmp_path
):
    clip = write_clip(tmp_path / "long.mp4", 60)  # read at real time: still running when A dies
    with redis_server(tmp_path) as redis_process, rtsp_camera() as camera:
        cluster = {"redis_url": redis_process.url, "lease_ttl_s": LEASE_TTL_S}
        env = {
            "STREAMGUARD_MODEL__PATH": str(checkpoint),
            "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN]),
            "STREAMGUARD_SERVICE__ALLOW_FILE_SOURCES": "true",
            "STREAMGUARD_SERVICE__FILE_ROOT": str(tmp_path),
            "STREAMGUARD_CLUSTER__REDIS_URL": redis_process.url,
            "STREAMGUARD_CLUSTER__LEASE_TTL_S": str(LEASE_TTL_S),
        }
        settings = tiny_settings(checkpoint)
        settings.cluster = ClusterSettings(**cluster)
        backbone = load_backbone(settings.model, settings.chunk)
        with (
            serve_process(tmp_path, ["--config", "tiny"], env) as worker_a,
            serve(create_app(settings, backbone)) as worker_b,
        ):
            a = worker_a.service
            created = a.http.post(
                "/v1/streams", json={"source": "rtsp", "url": camera_url_with_credentials(camera.url)}
            )
            assert created.status_code == 201, created.text
            camera_id = created.json()["id"]
            assert SECRET not in created.text
            filed = a.http.post("/v1/streams", json={"source": "file", "path": str(clip), "realtime": True})
            assert filed.status_code == 201, filed.text
            file_id = filed.json()["id"]
            wait_until(lambda: a.stream(camera_id)["stats"]["chunks_processed"] > 0, "A to run the camera")

            # While A heartbeats, B leaves its streams alone (two lease periods is plenty to see it):
            # it shows them as A has them (asking A), and runs none itself.
            time.sleep(2 * LEASE_TTL_S)
            assert worker_b.http.get(f"/v1/streams/{camera_id}").json()["stats"]["chunks_processed"] > 0
            assert metric(worker_b, "streamguard_streams_taken_over_total") == 0
            record = worker_b.http.get(f"/v1/streams/{camera_id}/answers").json()["stream"]
            assert SECRET not in json.dumps(record)  # the record another worker reads shows no credentials
            worker_of_a = record["worker"]

            worker_a.process.kill()  # a crash: no clean shutdown, no lease released
            worker_a.process.wait(30)

            def taken_over() -> dict | None:
                response = worker_b.http.get(f"/v1/streams/{camera_id}")
                if response.status_code != 200:
                    return None
                stream = response.json()
                return stream if stream["stats"]["chunks_processed"] > 0 else None

            stream = wait_until(taken_over, "B to run the dead worker's camera", timeout_s=60)
            assert stream["kind"] == "rtsp" and stream["state"] == "live"
            assert SECRET not in stream["source"] and stream["source"].endswith("/cam")
            assert metric(worker_b, "streamguard_streams_taken_over_total") == 1

            with worker_b.ws(f"/v1/streams/{camera_id}/ws") as ws:
                ws.send(json.dumps({"type": "question.ask", "id": "q1", "text": "What do you see?"}))
                events = receive_until(ws, lambda e: e["type"] in ("answer.done", "error"))
            assert events[-1]["type"] == "answer.done", events[-1]

            def lost() -> dict | None:
                record = worker_b.http.get(f"/v1/streams/{file_id}/answers").json()["stream"]
                return record if record["state"] == "error" else None

            record = wait_until(lost, "the file stream to be recorded as lost", timeout_s=60)
            assert "cannot move to another worker" in record["error"] and record["worker"] == worker_of_a
            assert worker_b.http.get(f"/v1/streams/{file_id}").status_code == 404  # nobody runs it
            camera_record = worker_b.http.get(f"/v1/streams/{camera_id}/answers").json()["stream"]
            assert camera_record["state"] == "live" and camera_record["worker"] not in ("", worker_of_a)


async def test_a_worker_back_from_a_stall_stops_a_stream_taken_over_and_keeps_one_that_could_not_move(
    checkpoint, tmp_path
):
    """A worker stalls past its leases. Another worker claims one of its streams (as it takes a
    camera over) and finds the other a file stream it cannot move, so records it as lost. Back,
    the stalled worker's writes cannot overwrite the claimed stream's record, its heartbeat stops
    its copy of that one, and takes the lost one back (its record still names it)."""
    settings = tiny_settings(checkpoint)
    settings.cluster = ClusterSettings(lease_ttl_s=LEASE_TTL_S)
    clip = write_clip(tmp_path / "long.mp4", 60)
    backbone = load_backbone(settings.model, settings.chunk)
    scheduler = Scheduler(settings.service.max_pending_chunks)
    scheduler.start()
    with redis_server(tmp_path) as redis_process:
        cluster = settings.cluster.model_copy(update={"redis_url": redis_process.url})
        mine = await RedisStore.connect(cluster, "stalled-worker")
        other = await RedisStore.connect(cluster, "other-worker")
        registry = StreamRegistry(settings, backbone, scheduler, ServiceMetrics(), mine)
        others = StreamRegistry(settings, backbone, scheduler, ServiceMetrics(), other)
        heartbeat = Heartbeat(mine, registry.active_streams, registry.lease_lost, LEASE_TTL_S / 3)
        try:
            opened = []
            for _ in range(2):
                source = FileSource(clip, settings.chunk, realtime=True)
                opened.append(await registry.open(StreamKind.FILE, source, "a file", owner_of(TOKEN)))
            claimed_id, kept_id = (stream.id for stream in opened)
            with redis_process.client() as client:  # the stall: the leases lapse
                client.delete(*(f"{cluster.key_prefix}lease:{i}" for i in (claimed_id, kept_id)))
            claimed = await other.claim_stream(claimed_id)
            assert claimed is not None and claimed.worker == "other-worker"
            take_over = TakeOver(
                other,
                LEASE_TTL_S,
                lambda i: others.find(i) is not None,
                others.has_room,
                others.continue_camera,
            )
            await take_over.round()  # the file stream left: it cannot move
            lost = await other.get_stream(kept_id)
            assert lost.state == "error" and "cannot move" in lost.error and lost.worker == "stalled-worker"

            # back: a late write of the claimed stream's record is refused ...
            await mine.put_stream(registry.get(claimed_id).record(mine.worker))
            assert await other.get_stream(claimed_id) == claimed
            # ... and the heartbeat stops the copy and frees its cache, keeping the other stream
            await heartbeat.beat()
            assert [s.id for s in registry.all()] == [kept_id]
            assert scheduler.stats().streams == 1
            assert await other.get_stream(claimed_id) == claimed  # not overwritten with "ended"
            assert await other.lease_holder(claimed_id) == "other-worker"
            assert await other.lease_holder(kept_id) == "stalled-worker"
            kept = await other.get_stream(kept_id)  # its record is put right by the same beat
            assert (
                kept.state in ("starting", "live") and kept.error is None and kept.worker == "stalled-worker"
            )
        finally:
            await registry.close()
            await others.close()
            await scheduler.stop()
            await mine.aclose()
            await other.aclose()
