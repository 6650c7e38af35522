"""Any worker answers for any stream: two `streamguard serve` processes on one real Redis, a
GStreamer RTSP camera opened on worker A, and everything asked of worker B. B lists and shows
A's stream, answers a question over its own websocket with A's deltas in order, subscribes to
its stats, cancels across workers, deletes it; and when A is killed (-9) mid-answer, B's client
gets `stream_lost` within about one lease TTL instead of waiting for good."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from redis_helpers import redis_server
from rtsp_helpers import rtsp_camera
from service_helpers import TOKEN, receive, receive_until, serve_process, wait_until
from streamguard_client import StreamGuard
from test_webrtc import ClientPeer
from websockets.exceptions import ConnectionClosed

from streamguard.vocabulary import REDIRECT_HEADER, WORKER_URL_HEADER

pytestmark = [pytest.mark.redis, pytest.mark.rtsp]

LEASE_TTL_S = 1.5
QUESTION = "What do you see?"
MANUAL = {REDIRECT_HEADER: "manual"}


def ask(ws, question_id: str, max_tokens: int = 16) -> None:
    ws.send(
        json.dumps({"type": "question.ask", "id": question_id, "text": QUESTION, "max_tokens": max_tokens})
    )


def test_a_camera_on_worker_a_is_listed_asked_cancelled_and_deleted_through_worker_b(tmp_path):
    with redis_server(tmp_path) as redis_process, rtsp_camera() as camera:
        env = {
            "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN]),
            "STREAMGUARD_SESSION__MAX_NEW_TOKENS": "256",
            "STREAMGUARD_CLUSTER__REDIS_URL": redis_process.url,
            "STREAMGUARD_CLUSTER__LEASE_TTL_S": str(LEASE_TTL_S),
        }
        with (
            serve_process(tmp_path, ["--config", "tiny"], env) as worker_a,
            serve_process(tmp_path, ["--config", "tiny"], env) as worker_b,
        ):
            a, b = worker_a.service, worker_b.service
            opened = [
                a.http.post("/v1/streams", json={"source": "rtsp", "url": camera.url}) for _ in range(2)
            ]
            assert all(r.status_code == 201 for r in opened), [r.text for r in opened]
            first, second = (r.json()["id"] for r in opened)
            wait_until(lambda: a.stream(first)["stats"]["chunks_processed"] > 0, "A to run the camera")

            # B shows and lists A's streams as its own
            shown = b.stream(first)
            assert shown["id"] == first and shown["kind"] == "rtsp"
            listed = {s["id"] for s in b.http.get("/v1/streams").json()["streams"]}
            assert {first, second} <= listed

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
                done = receive_until(
                    ws, lambda e: e["type"] in ("answer.done", "error") and e.get("id") == "q2"
                )
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
            assert a.http.get(f"/v1/streams/{first}").status_code == 404
            assert b.http.get(f"/v1/streams/{first}").status_code == 404
            answers = b.http.get(f"/v1/streams/{first}/answers").json()["answers"]
            assert [entry["question_id"] for entry in answers][:1] == ["q1"]

            # A dies mid-answer: B's client hears of it within about a lease TTL
            wait_until(lambda: a.stream(second)["stats"]["chunks_processed"] > 0, "A to run the 2nd camera")
            with b.ws(f"/v1/streams/{second}/ws") as ws:
                ask(ws, "q3", max_tokens=256)
                receive_until(ws, lambda e: e["type"] == "answer.delta")
                worker_a.process.kill()
                killed = time.monotonic()
                lost = receive_until(ws, lambda e: e["type"] == "error")[-1]
                waited = time.monotonic() - killed
                assert lost["code"] == "stream_lost", lost
                # the owner's liveness key lapses within one TTL; the relay looks every third of one
                assert waited < LEASE_TTL_S * 4 / 3 + 1.0, waited
                with pytest.raises(ConnectionClosed) as closed:
                    receive(ws, timeout_s=30)
                assert closed.value.rcvd.code == 4503
            worker_a.process.wait(30)


def test_a_worker_sent_sigterm_hands_its_camera_over_at_once_and_tells_its_clients(tmp_path):
    admin = {"token": "admin-token", "name": "ops", "role": "admin"}
    with redis_server(tmp_path) as redis_process, rtsp_camera() as camera:
        env = {
            "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN, admin]),
            "STREAMGUARD_SESSION__MAX_NEW_TOKENS": "256",
            "STREAMGUARD_CLUSTER__REDIS_URL": redis_process.url,
            "STREAMGUARD_CLUSTER__LEASE_TTL_S": str(LEASE_TTL_S),
            "STREAMGUARD_CLUSTER__DRAIN_TIMEOUT_S": "20",
        }
        with (
            serve_process(tmp_path, ["--config", "tiny"], env) as worker_a,
            serve_process(tmp_path, ["--config", "tiny"], env) as worker_b,
        ):
            a, b = worker_a.service, worker_b.service
            refused = a.http.post("/v1/admin/drain")  # a user token may not drain a worker
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only"
            created = a.http.post("/v1/streams", json={"source": "rtsp", "url": camera.url})
            assert created.status_code == 201, created.text
            camera_id = created.json()["id"]
            wait_until(lambda: a.stream(camera_id)["stats"]["chunks_processed"] > 0, "A to run the camera")
            # one client on A itself, one on B (forwarded to A)
            with a.ws(f"/v1/streams/{camera_id}/ws") as on_a, b.ws(f"/v1/streams/{camera_id}/ws") as on_b:
                on_b.send(json.dumps({"type": "stats.subscribe", "interval_s": 0.5}))
                receive_until(on_b, lambda e: e["type"] == "stream.stats")  # the relay is up
                ask(on_a, "cut", max_tokens=256)  # still being written when the drain comes
                written = receive_until(on_a, lambda e: e["type"] == "answer.delta")
                worker_a.process.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                written += receive_until(on_a, lambda e: e["type"] == "stream.moved")
                moved = [written[-1], receive_until(on_b, lambda e: e["type"] == "stream.moved")[-1]]
                answers = b.http.get(f"/v1/streams/{camera_id}/answers").json()
                handed_in = time.monotonic() - sent
                assert handed_in < 2.0, handed_in
                record = answers["stream"]
                # the answer the drain cut: its client told, and logged as far as it got
                told = [e for e in written if e["type"] not in ("answer.delta", "stream.moved")]
                assert [(e["type"], e["code"], e["id"]) for e in told] == [
                    ("error", "worker_draining", "cut")
                ]
                logged = [entry for entry in answers["answers"] if entry["question_id"] == "cut"]
                deltas = "".join(e["text"] for e in written if e["type"] == "answer.delta")
                assert [(entry["finish_reason"], entry["answer"]) for entry in logged] == [
                    ("worker_draining", deltas)
                ]
                assert record["state"] in ("starting", "live") and record["worker"] == moved[0]["worker"]
                assert (
                    moved[0]
                    == moved[1]
                    == {"type": "stream.moved", "stream": camera_id, "worker": record["worker"]}
                )
                for ws in (on_a, on_b):
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            receive(ws, timeout_s=30)
                    assert closed.value.rcvd.code == 4307
            worker_a.process.wait(30)  # drained, then it exits
            assert "service.drained" in worker_a.output()
            # B runs the camera now under the same id
            stream = wait_until(
                lambda: (s := b.stream(camera_id))["stats"]["chunks_processed"] > 0 and s,
                "B to run the camera",
            )
            assert stream["state"] == "live"
            with b.ws(f"/v1/streams/{camera_id}/ws") as ws:
                ask(ws, "after")
                assert (
                    receive_until(ws, lambda e: e["type"] in ("answer.done", "error"))[-1]["type"]
                    == "answer.done"
                )


def test_an_offer_to_a_full_worker_is_redirected_to_one_with_room_and_goes_live_there(tmp_path):
    with redis_server(tmp_path) as redis_process, rtsp_camera() as camera:
        env = {
            "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN]),
            "STREAMGUARD_CLUSTER__REDIS_URL": redis_process.url,
            "STREAMGUARD_CLUSTER__LEASE_TTL_S": str(LEASE_TTL_S),
        }
        full = {**env, "STREAMGUARD_SERVICE__MAX_STREAMS": "1"}
        with (
            serve_process(tmp_path, ["--config", "tiny"], full) as worker_a,
            serve_process(tmp_path, ["--config", "tiny"], env) as worker_b,
        ):
            a, b = worker_a.service, worker_b.service
            created = a.http.post("/v1/streams", json={"source": "rtsp", "url": camera.url})
            assert created.status_code == 201, created.text  # A is full now
            wait_until(lambda: a.stream(created.json()["id"])["state"] == "live", "A to run the camera")
            peer = ClientPeer()
            try:
                offer = {"sdp": peer.offer(), "type": "offer"}
                redirected = wait_until(
                    lambda: (r := a.http.post("/v1/streams/webrtc", json=offer)).status_code == 307 and r,
                    "A to know B has room",  # B advertises itself every third of a lease
                )
                assert redirected.headers["location"] == f"{b.url}/v1/streams/webrtc"
                # a client that follows placement itself (the page) reads where to go instead
                told = a.http.post(offer_url := "/v1/streams/webrtc", json=offer, headers=MANUAL)
                assert told.status_code == 503 and told.headers[WORKER_URL_HEADER] == f"{b.url}{offer_url}"
                assert told.json()["error"] == {
                    "code": "service_full",
                    "message": told.json()["error"]["message"],
                    "worker_url": f"{b.url}{offer_url}",
                }
                answered = a.http.post(redirected.headers["location"], json=offer)  # as a client follows it
                assert answered.status_code == 201, answered.text
                peer.accept(answered.json()["sdp"])
                stream_id = answered.json()["stream_id"]
                live = wait_until(
                    lambda: (s := b.stream(stream_id))["stats"]["chunks_processed"] > 0 and s, "the peer on B"
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
