"""Issue #12, tenancy and hostile input, tried as an attacker would: the real service under
uvicorn on 127.0.0.1 with the tiny real model, real HTTP and websocket clients, a real Redis.
Each test names the finding it covers."""

from __future__ import annotations

import json

import pytest
from redis_helpers import redis_server
from service_helpers import receive, receive_until, serve, tiny_settings, wait_until
from websockets.exceptions import ConnectionClosed

from streamguard.backbones import load_backbone
from streamguard.config import ClusterSettings
from streamguard.service import create_app

ALICE, BOB, ADMIN = "alice-token", "bob-token", "admin-token"
TOKENS = [ALICE, {"token": BOB, "name": "bob"}, {"token": ADMIN, "name": "ops", "role": "admin"}]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def service(checkpoint):
    settings = tiny_settings(checkpoint, tokens=TOKENS, allow_file_sources=True, max_streams_per_token=1)
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
