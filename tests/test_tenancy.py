"""Issue #12, tenancy and hostile input, tried as an attacker would: the real service under
uvicorn on 127.0.0.1 with the tiny real model, real HTTP and websocket clients, a real Redis.
Each test names the finding it covers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from redis_helpers import redis_server
from rtsp_helpers import rtsp_camera
from service_helpers import (
    free_port,
    receive,
    receive_until,
    serve,
    serve_process,
    tiny_settings,
    wait_until,
)
from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streamguard.backbones import load_backbone
from streamguard.config import ClusterSettings
from streamguard.service import create_app
from streamguard.vocabulary import WORKER_URL_HEADER

ALICE, BOB, ADMIN = "alice-token", "bob-token", "admin-token"
TRUSTED_ORIGIN = "https://ops.example"
TOKENS = [ALICE, {"token": BOB, "name": "bob"}, {"token": ADMIN, "name": "ops", "role": "admin"}]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def service(checkpoint):
    settings = tiny_settings(
        checkpoint,
        tokens=TOKENS,
        allow_file_sources=True,
        max_streams_per_token=1,
        ws_origins=[TRUSTED_ORIGIN],
    )
    with serve(create_app(settings)) as live:
        yield live


def open_file_stream(service, path, token: str, realtime: bool = False) -> str:
    response = service.http.post(
        "/v1/streams", json={"source": "file", "path": str(path), "realtime": realtime}, headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def error_code(response) -> str:
    return response.json()["error"]["code"]


def ask_once(service, stream_id: str, token: str) -> dict:
    with service.ws(f"/v1/streams/{stream_id}/ws", token=token) as ws:
        ws.send(json.dumps({"type": "question.ask", "id": "q", "text": "What is it?", "max_tokens": 2}))
        return receive_until(ws, lambda event: event["type"] in ("answer.done", "error"))[-1]


# -- finding 1: one token cannot touch another's streams ------------------------------------------


def test_a_user_token_sees_asks_on_reads_and_deletes_only_the_streams_it_opened(service, clip):
    stream_id = open_file_stream(service, clip("tenancy.mp4", 4.0), ALICE)
    try:
        assert ask_once(service, stream_id, ALICE)["type"] == "answer.done"
        # bob: the stream does not exist for him, over REST and over the websocket
        listed = service.http.get("/v1/streams", headers=bearer(BOB)).json()
        assert stream_id not in [s["id"] for s in listed["streams"]]
        assert listed["viewer"] == {"name": "bob", "role": "user", "sees_all_streams": False}
        for method, path in [
            ("GET", f"/v1/streams/{stream_id}"),
            ("GET", f"/v1/streams/{stream_id}/answers"),
            ("DELETE", f"/v1/streams/{stream_id}"),
        ]:
            response = service.http.request(method, path, headers=bearer(BOB))
            assert (response.status_code, error_code(response)) == (404, "unknown_stream"), (method, path)
        with service.ws(f"/v1/streams/{stream_id}/ws", token=BOB) as ws:
            assert receive(ws)["code"] == "unknown_stream"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 4404
        assert service.http.get(f"/v1/streams/{stream_id}", headers=bearer(ALICE)).status_code == 200
        # nor in /metrics: bob's scrape has the service-wide series, none of alice's stream
        series = f'stream="{stream_id}"'
        bobs = service.http.get("/metrics", headers=bearer(BOB)).text
        assert series not in bobs and "streamguard_service_chunks_received_total" in bobs
        for token in (ALICE, ADMIN):
            assert series in service.http.get("/metrics", headers=bearer(token)).text, token

        # the admin sees every stream, reads its answers and may delete it
        listed = service.http.get("/v1/streams", headers=bearer(ADMIN)).json()
        assert stream_id in [s["id"] for s in listed["streams"]] and listed["viewer"]["sees_all_streams"]
        log = service.http.get(f"/v1/streams/{stream_id}/answers", headers=bearer(ADMIN)).json()
        assert [answer["question_id"] for answer in log["answers"]] == ["q"]
        assert ask_once(service, stream_id, ADMIN)["type"] == "answer.done"
        assert service.http.delete(f"/v1/streams/{stream_id}", headers=bearer(ADMIN)).status_code == 200
    finally:
        service.http.delete(f"/v1/streams/{stream_id}", headers=bearer(ADMIN))


def test_a_token_quota_counts_its_running_streams_not_ended_ones(service, clip):
    path = clip("tenancy.mp4", 4.0)
    first = open_file_stream(service, path, BOB)  # not paced: it ends as soon as it is decoded
    second = None
    try:
        wait_until(lambda: service.stream(first, BOB)["state"] == "ended", "the first stream to end")
        second = open_file_stream(service, path, BOB, realtime=True)  # within the quota of 1
        refused = service.http.post(
            "/v1/streams", json={"source": "file", "path": str(path)}, headers=bearer(BOB)
        )
        assert (refused.status_code, error_code(refused)) == (429, "too_many_streams")
    finally:
        for stream_id in (first, second):
            if stream_id is not None:
                service.http.delete(f"/v1/streams/{stream_id}", headers=bearer(BOB))


@pytest.mark.redis
def test_the_owner_holds_across_workers_sharing_redis(checkpoint, clip, tmp_path):
    with redis_server(tmp_path) as redis_process:
        settings = tiny_settings(checkpoint, tokens=TOKENS, allow_file_sources=True)
        settings.cluster = ClusterSettings(redis_url=redis_process.url)
        backbone = load_backbone(settings.model, settings.chunk)  # one model for both workers
        with serve(create_app(settings, backbone)) as first, serve(create_app(settings, backbone)) as second:
            stream_id = open_file_stream(first, clip("tenancy.mp4", 4.0), ALICE)
            try:
                assert ask_once(first, stream_id, ALICE)["type"] == "answer.done"
                answers = f"/v1/streams/{stream_id}/answers"
                wait_until(
                    lambda: second.http.get(answers, headers=bearer(ALICE)).status_code == 200,
                    "the owner to read the answer log on the other worker",
                )
                refused = second.http.get(answers, headers=bearer(BOB))
                assert (refused.status_code, error_code(refused)) == (404, "unknown_stream")
                assert second.http.get(answers, headers=bearer(ADMIN)).status_code == 200
            finally:
                first.http.delete(f"/v1/streams/{stream_id}", headers=bearer(ALICE))


# -- finding 2: a file source that would block is refused at once ---------------------------------


def test_file_sources_are_regular_files_inside_the_file_root_and_nothing_blocks(service, clip, tmp_path):
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    for path, reason in [
        (fifo, "not a regular file"),  # on main: the probe blocks on open() for good
        ("/proc/self/fd/0", "service.file_root"),
        ("/dev/zero", "service.file_root"),
        ("/etc/hostname", "service.file_root"),
        (tmp_path / "missing.mp4", "No such file"),
    ]:
        response = service.http.post(
            "/v1/streams", json={"source": "file", "path": str(path)}, headers=bearer(ALICE), timeout=10
        )
        assert (response.status_code, error_code(response)) == (422, "invalid_source"), path
        assert reason in response.json()["error"]["message"], path
    stream_id = open_file_stream(service, clip("tenancy.mp4", 4.0), ALICE)  # a real file still opens
    service.http.delete(f"/v1/streams/{stream_id}", headers=bearer(ALICE))


# -- finding 4: camera URLs never crash the request or show a credential ------------------------


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("rtsp://h:99999/cam", []),
        ("rtsp://h:abc/cam", []),
        ("rtsp://admin:pa/ss@h/cam", ["pa/ss", "ss@h"]),
        ("rtsp://admin:pa?ss@h/cam", ["pa?ss", "ss@h"]),
        ("rtsp://admin:p@ss#w:rd@h/cam", ["p@ss", "w:rd"]),
        ("rtsp://127.0.0.1/cam\x00/../evil", ["evil"]),
        ("rtsp://127.0.0.1/cam\r\nX-Injected: 1", ["Injected"]),
    ],
)
def test_bad_camera_urls_are_422_without_a_credential_in_the_message(service, url, secrets):
    response = service.http.post("/v1/streams", json={"source": "rtsp", "url": url}, headers=bearer(ALICE))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert not [secret for secret in secrets if secret in response.text]


def test_credentials_in_a_camera_path_or_query_are_never_shown(service, caplog):
    caplog.set_level(logging.INFO, logger="streamguard")
    # the cheap-camera form, nothing listening: refused, and the message shows no password
    port = free_port()
    url = f"rtsp://admin:[secret]@127.0.0.1:{port}/user=admin&password=XYZ&channel=1&stream=0.sdp?"
    refused = service.http.post("/v1/streams", json={"source": "rtsp", "url": url}, headers=bearer(ALICE))
    assert (refused.status_code, error_code(refused)) == (422, "source_unreachable")
    message = refused.json()["error"]["message"]
    assert f"127.0.0.1:{port}/user=***&password=***&channel=1" in message
    assert "XYZ" not in message and "secret" not in message
    with rtsp_camera() as camera:
        shown = f"{camera.url}?user=***&pwd=***&channel=1"
        created = service.http.post(
            "/v1/streams",
            json={"source": "rtsp", "url": f"{camera.url}?user=admin&pwd=XYZ&channel=1"},
            headers=bearer(ALICE),
        )
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        try:
            assert created.json()["source"] == shown
            listed = service.http.get("/v1/streams", headers=bearer(ADMIN))
            assert shown in listed.text and "XYZ" not in listed.text
        finally:
            service.http.delete(f"/v1/streams/{stream_id}", headers=bearer(ALICE))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert shown in logged and "XYZ" not in logged and "secret" not in logged


# -- finding 5: websocket messages that would crash the handler ----------------------------------


def test_deeply_nested_json_and_lone_surrogates_get_their_own_errors_and_the_socket_lives(service, clip):
    stream_id = open_file_stream(service, clip("tenancy.mp4", 4.0), ALICE)
    try:
        with service.ws(f"/v1/streams/{stream_id}/ws", token=ALICE) as ws:
            ws.send("[" * 5000 + "]" * 5000)  # well under the size limit
            assert receive(ws)["code"] == "bad_json"
            nested = '{"type": "question.ask", "id": "q", "text": ' + "[" * 5000 + "]" * 5000 + "}"
            ws.send(nested)
            assert receive(ws)["code"] == "bad_json"
            ws.send('{"type": "question.ask", "id": "q", "text": "why \\ud800?", "max_tokens": 2}')
            error = receive(ws)
            assert error["code"] == "invalid_message" and "lone surrogate" in error["message"]
            assert error["id"] == "q"
            ask = {"type": "question.ask", "id": "ok", "text": "And now?", "max_tokens": 2}
            ws.send(json.dumps(ask))  # the socket lives on
            assert receive_until(ws, lambda event: event["type"] == "answer.done")[-1]["id"] == "ok"
    finally:
        service.http.delete(f"/v1/streams/{stream_id}", headers=bearer(ALICE))


# -- finding 6: request bodies are bounded before they are read ----------------------------------


def raw_post(service, path: str, declared_length: int, sent: bytes) -> tuple[int, dict]:
    """POST with a declared Content-Length, sending only `sent` of the body: the status and
    error body the server answers with before it has the rest."""
    address = urlsplit(service.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared_length}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_request_bodies_over_their_limit_are_413_before_they_are_read(service):
    status, body = raw_post(service, "/v1/streams", 50 * 2**20, b'{"source": "rtsp", "url": "rtsp://x/')
    assert (status, body["error"]["code"]) == (413, "request_too_large")
    # an SDP over its 64 KiB limit is refused before the body is read whole
    status, body = raw_post(service, "/v1/streams/webrtc", 200 * 1024, b'{"sdp": "v=0\\r\\n')
    assert (status, body["error"]["code"]) == (413, "request_too_large")
    # a body sent without a length (chunked) is cut off at the limit
    url = "rtsp://h/" + "a" * (2 * 2**20)
    chunks = (part.encode() for part in ['{"source": "rtsp", "url": "', url, '"}'])
    response = service.http.post("/v1/streams", content=chunks, headers=bearer(ALICE))
    assert (response.status_code, error_code(response)) == (413, "request_too_large")
    assert len(response.content) < 1000  # nothing of the body echoed
    # JSON nested too deeply for the parser, within the limit: a clear error, not a 500
    nested = b"[" * 100_000 + b"]" * 100_000
    response = service.http.post("/v1/streams", content=nested, headers=bearer(ALICE))
    assert response.status_code in (400, 422) and error_code(response) == "invalid_request"


# -- finding 7: RTSP destinations are the operator's to allow --------------------------------------


def test_rtsp_destinations_outside_rtsp_allow_are_refused_alike_before_any_connection(checkpoint, service):
    settings = tiny_settings(checkpoint)
    backbone = load_backbone(settings.model, settings.chunk)  # one model for both services
    with rtsp_camera() as camera:
        # a camera, a closed port and an HTTP server: on main three different answers (a scanner)
        targets = [
            camera.url,
            f"rtsp://127.0.0.1:{free_port()}/cam",
            f"rtsp://{urlsplit(service.url).netloc}/",
        ]
        denied = tiny_settings(checkpoint, tokens=TOKENS, rtsp_allow=["192.0.2.0/24", "camera.example"])
        with serve(create_app(denied, backbone)) as live:
            answers = [
                live.http.post("/v1/streams", json={"source": "rtsp", "url": url}, headers=bearer(ALICE))
                for url in targets
            ]
            assert {(r.status_code, r.text) for r in answers} == {(403, answers[0].text)}
            assert error_code(answers[0]) == "destination_not_allowed"
        allowed = tiny_settings(checkpoint, tokens=TOKENS, rtsp_allow=["127.0.0.0/8"])
        with serve(create_app(allowed, backbone)) as live:
            created = live.http.post(
                "/v1/streams", json={"source": "rtsp", "url": camera.url}, headers=bearer(ALICE)
            )
            assert created.status_code == 201, created.text
            live.http.delete(f"/v1/streams/{created.json()['id']}", headers=bearer(ALICE))


# -- finding 8: headers, origins, the health check -----------------------------------------------


def test_pages_may_not_be_framed_or_sniffed_and_run_only_their_own_code(service):
    for path in ("/", "/dashboard", "/app.js", "/v1/streams"):
        headers = service.http.get(path, headers=bearer(ALICE)).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, path
    assert "content-security-policy" not in service.http.get("/docs").headers  # Swagger UI's CDN


def test_the_api_answers_cors_for_the_listed_page_origins_only(checkpoint):
    # No lifespan (no model): CORS and the security headers answer before any route runs.
    app = create_app(tiny_settings(checkpoint, tokens=TOKENS, cors_origins=[TRUSTED_ORIGIN]))
    client = TestClient(app)
    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,streamguard-redirect",
    }
    allowed = client.options("/v1/streams/webrtc", headers={"Origin": TRUSTED_ORIGIN, **asked})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == TRUSTED_ORIGIN
    assert {"POST", "DELETE"} <= set(allowed.headers["access-control-allow-methods"].split(", "))
    assert "access-control-allow-credentials" not in allowed.headers  # a bearer header, never cookies
    refused = client.options("/v1/streams/webrtc", headers={"Origin": "https://other.example", **asked})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

    answered = client.get("/v1/protocol.json", headers={"Origin": TRUSTED_ORIGIN})
    assert answered.headers["access-control-allow-origin"] == TRUSTED_ORIGIN
    assert answered.headers["access-control-expose-headers"] == WORKER_URL_HEADER  # placement's target
    page = client.get("/", headers={"Origin": TRUSTED_ORIGIN})  # the pages' files need no CORS
    assert page.status_code == 200 and "access-control-allow-origin" not in page.headers
    # one worker, no cluster: the pages connect to their own origin only
    assert "connect-src 'self';" in page.headers["content-security-policy"]


def test_websockets_from_an_origin_not_listed_are_refused(service, clip):
    stream_id = open_file_stream(service, clip("tenancy.mp4", 4.0), ALICE)
    url = "ws" + service.url.removeprefix("http") + f"/v1/streams/{stream_id}/ws?token={ALICE}"
    subscribe = json.dumps({"type": "stats.subscribe"})
    try:
        with connect(url, origin="https://evil.example", open_timeout=30) as ws:
            assert receive(ws)["code"] == "origin_not_allowed"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 4403
        for origin in (TRUSTED_ORIGIN, None):  # a listed page, or a client that is not a browser
            with connect(url, origin=origin, open_timeout=30) as ws:
                ws.send(subscribe)
                assert receive(ws)["type"] == "stream.stats"
    finally:
        service.http.delete(f"/v1/streams/{stream_id}", headers=bearer(ALICE))


def test_healthz_without_a_token_says_only_ok_degraded_or_down(service):
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service.url}/healthz", headers=bearer("wrong")).json() == {"status": "ok"}
    detailed = httpx.get(f"{service.url}/healthz", headers=bearer(BOB)).json()
    assert detailed["status"] == "ok" and detailed["store"]["backend"] == "memory" and detailed["worker"]


# -- memory: streams opened and deleted leave nothing behind ---------------------------------------

CYCLES = 100  # streams of each kind opened and deleted
# What 3 x CYCLES streams may add to the service's resident memory once each kind has run a few:
# allocator slack and the store's bounded records, far below a leaked pipeline a stream
# (its session, cache and metric series).
# Measured alone: +20 to +30 MiB for 100 file streams, levelling off (+31 MiB after 500); a leaked
# pipeline per stream would add hundreds. The bound leaves room for a loaded shared machine.
RSS_GROWTH_BOUND = 160 * 2**20


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def open_and_delete_webrtc(url: str, count: int) -> None:
    """`count` real aiortc peers, one after the other: each offers a video track, connects,
    and its stream is deleted."""
    async with httpx.AsyncClient(base_url=url, headers=bearer(ALICE), timeout=60) as http:
        for _ in range(count):
            peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                peer.addTrack(VideoStreamTrack())
                await peer.setLocalDescription(await peer.createOffer())
                created = await http.post(
                    "/v1/streams/webrtc", json={"sdp": peer.localDescription.sdp, "type": "offer"}
                )
                assert created.status_code == 201, created.text
                answer = RTCSessionDescription(sdp=created.json()["sdp"], type="answer")
                await peer.setRemoteDescription(answer)
                async with asyncio.timeout(60):
                    while peer.connectionState != "connected":
                        await asyncio.sleep(0.05)
                deleted = await http.delete(f"/v1/streams/{created.json()['stream_id']}")
                assert deleted.status_code == 200, deleted.text
            finally:
                await peer.close()


def open_and_delete(http: httpx.Client, body: dict, count: int) -> None:
    for _ in range(count):
        created = http.post("/v1/streams", json=body)
        assert created.status_code == 201, created.text
        assert http.delete(f"/v1/streams/{created.json()['id']}").status_code == 200


def test_opening_and_deleting_streams_of_every_kind_does_not_grow_the_service(checkpoint, clip, tmp_path):
    video = clip("tenancy.mp4", 4.0)
    env = {
        "STREAMGUARD_MODEL__PATH": str(checkpoint),
        "STREAMGUARD_SERVICE__TOKENS": json.dumps([ALICE]),
        "STREAMGUARD_SERVICE__ALLOW_FILE_SOURCES": "true",
        "STREAMGUARD_SERVICE__FILE_ROOT": str(video.parent),
    }
    with rtsp_camera() as camera, serve_process(tmp_path, ["--config", "tiny"], env) as serving:
        http = httpx.Client(base_url=serving.service.url, headers=bearer(ALICE), timeout=60)
        kinds = {
            "file": lambda n: open_and_delete(
                http, {"source": "file", "path": str(video), "realtime": False}, n
            ),
            "rtsp": lambda n: open_and_delete(http, {"source": "rtsp", "url": camera.url}, n),
            "webrtc": lambda n: asyncio.run(open_and_delete_webrtc(serving.service.url, n)),
        }
        for run in kinds.values():  # warm up: every code path loaded, caches and pools at their size
            run(5)
        before = resident_bytes(serving.process.pid)
        growth = {}
        for kind, run in kinds.items():
            start = resident_bytes(serving.process.pid)
            run(CYCLES)
            growth[kind] = (resident_bytes(serving.process.pid) - start) / 2**20
        assert http.get("/v1/streams").json()["streams"] == []
        grown = resident_bytes(serving.process.pid) - before
        http.close()
    each = ", ".join(f"{kind} {mib:+.1f}" for kind, mib in growth.items())
    print(f"RSS {before / 2**20:.0f} MiB after warm-up; MiB added by {CYCLES} streams of each kind: {each}")
    assert grown < RSS_GROWTH_BOUND, f"the service grew by {grown / 2**20:.0f} MiB ({each})"
