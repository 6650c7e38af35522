"""The cluster as one service: three `streamguard serve` processes, A, B and C, on one real
Redis (`cluster_helpers`, shared by the session), and a GStreamer RTSP camera on A.

- Any worker answers for any stream: B and C list and show A's camera; B answers a question over
  its own websocket with A's deltas in order, subscribes to its stats, cancels across workers
  and deletes it; when A is killed (-9) mid-answer, B's client gets `stream_lost` within about
  one lease TTL instead of waiting for good.
- Drain: SIGTERM on A cuts the answer being written (logged, its client told), hands the camera
  to B or C within 2 s and tells A's clients, wherever they are connected, where it went.
- Placement: a WebRTC offer to A while it is full is sent on (307) to B or C and goes live there;
  a client that follows placement itself is told where; the Python client follows the 307."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from cluster_helpers import LEASE_TTL_S, Trio
from rtsp_helpers import rtsp_camera
from service_helpers import TOKEN, LiveService, receive, receive_until, wait_until
from streamguard_client import StreamGuard
from test_webrtc import ClientPeer
from websockets.exceptions import ConnectionClosed

from streamguard.vocabulary import REDIRECT_HEADER, WORKER_URL_HEADER

pytestmark = [pytest.mark.redis, pytest.mark.rtsp]

QUESTION = "What do you see?"
MANUAL = {REDIRECT_HEADER: "manual"}
OFFER_PATH = "/v1/streams/webrtc"


def ask(ws, question_id: str, max_tokens: int = 16) -> None:
    ws.send(
        json.dumps({"type": "question.ask", "id": question_id, "text": QUESTION, "max_tokens": max_tokens})
    )


def open_camera(service: LiveService, url: str) -> str:
    """A stream of the RTSP camera at `url` on `service`, once it has processed a chunk."""
    created = service.http.post("/v1/streams", json={"source": "rtsp", "url": url})
    assert created.status_code == 201, created.text
    stream_id = created.json()["id"]
    wait_until(lambda: service.stream(stream_id)["stats"]["chunks_processed"] > 0, "the camera to run")
    return stream_id


def test_a_camera_on_worker_a_is_listed_asked_cancelled_and_deleted_through_worker_b(cluster: Trio):
    a, b, c = cluster.services()
    with rtsp_camera() as camera:
        first = open_camera(a, camera.url)
        # B and C show and list A's stream as their own
        for other in (b, c):
            shown = other.stream(first)
            assert shown["id"] == first and shown["kind"] == "rtsp"
            assert first in {s["id"] for s in other.http.get("/v1/streams").json()["streams"]}

        with b.ws(f"/v1/streams/{first}/ws") as ws:
            ws.send(json.dumps({"type": "stats.subscribe", "interval_s": 0.5}))
            ask(ws, "q1")
            events = receive_until(ws, lambda e: e["type"] in ("answer.done", "error"))
            done = events[-1]
            assert done["type"] == "answer.done", done
            deltas = [e["text"] for e in events if e["type"] == "answer.delta" and e["id"] == "q1"]
            assert deltas and "".join(deltas) == done["text"]  # every delta, in order
            stats = [e for e in events if e["type"] == "stream.stats"]
            stats = stats or receive_until(ws, lambda e: e["type"] == "stream.stats")[-1:]
            assert stats[0]["stream"]["id"] == first

            ask(ws, "q2", max_tokens=256)
            receive_until(ws, lambda e: e["type"] == "answer.delta" and e["id"] == "q2")
            ws.send(json.dumps({"type": "question.cancel", "id": "q2"}))
            done = receive_until(ws, lambda e: e["type"] in ("answer.done", "error") and e.get("id") == "q2")
            assert done[-1]["type"] == "answer.done" and done[-1]["stats"]["finish_reason"] in (
                "cancelled",
                "length",  # the cancel came after the last token
            )

            deleted = b.http.delete(f"/v1/streams/{first}")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["id"] == first and deleted.json()["state"] == "ended"
            ended = receive_until(ws, lambda e: e["type"] == "error")[-1]
            assert ended["code"] == "stream_ended"
            with pytest.raises(ConnectionClosed) as closed:
                receive(ws, timeout_s=30)
            assert closed.value.rcvd.code == 4410
        for any_worker in (a, b, c):
            assert any_worker.http.get(f"/v1/streams/{first}").status_code == 404
        answers = c.http.get(f"/v1/streams/{first}/answers").json()["answers"]
        assert [entry["question_id"] for entry in answers][:1] == ["q1"]

        # A dies mid-answer: B's client hears of it within about a lease TTL
        second = open_camera(a, camera.url)  # A had room again
        with b.ws(f"/v1/streams/{second}/ws") as ws:
            ask(ws, "q3", max_tokens=256)
            receive_until(ws, lambda e: e["type"] == "answer.delta")
            cluster.a.process.kill()
            killed = time.monotonic()
            lost = receive_until(ws, lambda e: e["type"] == "error")[-1]
            waited = time.monotonic() - killed
            assert lost["code"] == "stream_lost", lost
            # the owner's liveness key lapses within one TTL; the relay looks every third of one
            assert waited < LEASE_TTL_S * 4 / 3 + 1.0, waited
            with pytest.raises(ConnectionClosed) as closed:
                receive(ws, timeout_s=30)
            assert closed.value.rcvd.code == 4503
        cluster.a.process.wait(30)


def test_a_worker_sent_sigterm_hands_its_camera_over_at_once_and_tells_its_clients(cluster: Trio):
    a, b, c = cluster.services()
    refused = a.http.post("/v1/admin/drain")  # a user token may not drain a worker
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only"
    with rtsp_camera() as camera:
        camera_id = open_camera(a, camera.url)
        # one client on A itself, one on B (forwarded to A)
        with a.ws(f"/v1/streams/{camera_id}/ws") as on_a, b.ws(f"/v1/streams/{camera_id}/ws") as on_b:
            on_b.send(json.dumps({"type": "stats.subscribe", "interval_s": 0.5}))
            receive_until(on_b, lambda e: e["type"] == "stream.stats")  # the relay is up
            ask(on_a, "cut", max_tokens=256)  # still being written when the drain comes
            written = receive_until(on_a, lambda e: e["type"] == "answer.delta")
            cluster.a.process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            written += receive_until(on_a, lambda e: e["type"] == "stream.moved")
            moved = [written[-1], receive_until(on_b, lambda e: e["type"] == "stream.moved")[-1]]
            answers = c.http.get(f"/v1/streams/{camera_id}/answers").json()
            handed_in = time.monotonic() - sent
            assert handed_in < 2.0, handed_in
            record = answers["stream"]
            assert record["state"] in ("starting", "live") and record["worker"] == moved[0]["worker"]
            assert (
                moved[0]
                == moved[1]
                == {"type": "stream.moved", "stream": camera_id, "worker": record["worker"]}
            )
            # the answer the drain cut: its client told, and logged as far as it got
            told = [e for e in written if e["type"] not in ("answer.delta", "stream.moved")]
            assert [(e["type"], e["code"], e["id"]) for e in told] == [("error", "worker_draining", "cut")]
            logged = [entry for entry in answers["answers"] if entry["question_id"] == "cut"]
            deltas = "".join(e["text"] for e in written if e["type"] == "answer.delta")
            assert [(entry["finish_reason"], entry["answer"]) for entry in logged] == [
                ("worker_draining", deltas)
            ]
            for ws in (on_a, on_b):
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        receive(ws, timeout_s=30)
                assert closed.value.rcvd.code == 4307
        cluster.a.process.wait(30)  # drained, then it exits
        assert "service.drained" in cluster.a.output()
        # B or C runs the camera now under the same id
        (holder,) = wait_until(lambda: cluster.holding(b, c), "B or C to hold the camera")
        stream = wait_until(
            lambda: (s := holder.stream(camera_id))["stats"]["chunks_processed"] > 0 and s,
            "the camera to run on its new worker",
        )
        assert stream["state"] == "live"
        with holder.ws(f"/v1/streams/{camera_id}/ws") as ws:
            ask(ws, "after")
            assert (
                receive_until(ws, lambda e: e["type"] in ("answer.done", "error"))[-1]["type"]
                == "answer.done"
            )


def test_an_offer_to_a_full_worker_is_redirected_to_one_with_room_and_goes_live_there(cluster: Trio):
    a, b, c = cluster.services()
    with_room = {f"{service.url}{OFFER_PATH}": service for service in (b, c)}
    with rtsp_camera() as camera:
        open_camera(a, camera.url)  # A is full now
        peer = ClientPeer()
        try:
            offer = {"sdp": peer.offer(), "type": "offer"}
            redirected = a.http.post(OFFER_PATH, json=offer)
            assert redirected.status_code == 307 and redirected.headers["location"] in with_room
            target = redirected.headers["location"]
            # a client that follows placement itself (the page) reads where to go instead
            told = a.http.post(OFFER_PATH, json=offer, headers=MANUAL)
            assert told.status_code == 503 and told.headers[WORKER_URL_HEADER] == target
            error = told.json()["error"]
            assert error == {"code": "service_full", "message": error["message"], "worker_url": target}
            answered = a.http.post(target, json=offer)  # as a client follows it
            assert answered.status_code == 201, answered.text
            peer.accept(answered.json()["sdp"])
            stream_id = answered.json()["stream_id"]
            placed = with_room[target]
            live = wait_until(
                lambda: (s := placed.stream(stream_id))["stats"]["chunks_processed"] > 0 and s,
                "the peer on the worker with room",
            )
            assert live["kind"] == "webrtc" and live["state"] == "live"
            assert stream_id in {s["id"] for s in a.http.get("/v1/streams").json()["streams"]}
        finally:
            peer.close()

        # the Python client follows the 307 itself, its token kept
        async def publish() -> dict:
            async with StreamGuard(a.url, TOKEN) as client:
                return await client.open_webrtc(offer["sdp"])

        opened = asyncio.run(publish())
        assert opened["stream"]["kind"] == "webrtc"
        assert a.http.get("/v1/stats").json()["streams"] == {"live": 1}  # A holds just its camera
        assert b.stream(opened["stream_id"])["state"] in ("starting", "live")
