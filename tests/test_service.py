"""The live service end to end: uvicorn on 127.0.0.1, the tiny real model, real files and
real websocket clients. Waits are bounded polls; nothing asserts on time."""

from __future__ import annotations

import json
import logging
import re

import httpx
import pytest
from service_helpers import TOKEN, receive, receive_until, serve, tiny_settings, wait_until
from websockets.exceptions import ConnectionClosed

from streamguard.backbones.tiny import build_tiny_checkpoint
from streamguard.cli import main
from streamguard.ingest.synthetic import write_clip
from streamguard.service import create_app
from streamguard.service.logs import RedactTokens

OTHER_TOKEN = "other-token"
MAX_MESSAGE_BYTES = 4096
QUESTION = "What is happening?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # static: the later chunks repeat the first one's picture, so their video is dropped as redundant
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=6, motion="static")


@pytest.fixture(scope="module")
def service(checkpoint):
    settings = tiny_settings(
        checkpoint,
        tokens=[TOKEN, OTHER_TOKEN],
        allow_file_sources=True,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_streams_per_token=2,
        session={"max_new_tokens": 256},
    )
    with serve(create_app(settings)) as live:
        yield live


def create_file_stream(service, clip, token: str = TOKEN) -> dict:
    response = service.http.post(
        "/v1/streams",
        json={"source": "file", "path": str(clip), "realtime": False},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def processed_stream(service, stream_id: str) -> dict:
    """The stream once its source has ended and every chunk it sent was processed or shed."""

    def settled():
        stream = service.stream(stream_id)
        stats = stream["stats"]
        done = stats["chunks_processed"] + stats["chunks_shed"] == stats["chunks_received"] > 0
        return stream if stream["state"] == "ended" and done else None

    return wait_until(settled, "the file stream to be processed")


def error_of(response) -> dict:
    return response.json()["error"]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return None


def test_a_file_stream_answers_questions_and_reports_its_stats(service, clip):
    created = create_file_stream(service, clip)
    stream_id = created["id"]
    assert created["kind"] == "file" and created["state"] in ("starting", "live", "ended")
    assert created["stats"]["chunks_processed"] == 0
    stream = processed_stream(service, stream_id)
    stats = stream["stats"]
    assert stats["chunks_processed"] == 3 and stats["chunks_shed"] == 0
    assert stats["chunks_dropped_redundant"] >= 1  # a static picture
    assert stats["tokens_in"] > stats["tokens_kept"] > 0 and 0 < stats["compression"] < 1
    assert stats["kv_tokens"] > 0 and stats["kv_bytes"] > 0 and stats["real_time_factor"] > 0
    overlay = stats["last_chunk"]
    assert overlay["index"] == 2 and len(overlay["grid"]) == 3 and len(overlay["resized_hw"]) == 2

    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ws.send(json.dumps({"type": "question.ask", "id": "q1", "text": QUESTION, "max_tokens": 8}))
        events = receive_until(ws, lambda event: event["type"] == "answer.done")
        deltas = [event for event in events if event["type"] == "answer.delta"]
        done = events[-1]
        assert deltas and all(event["id"] == "q1" for event in events)
        assert done["text"] == "".join(event["text"] for event in deltas)
        assert 1 <= done["stats"]["generated_tokens"] <= 8
        assert done["stats"]["finish_reason"] in ("stop", "length")
        assert done["stats"]["time_to_first_delta_ms"] > 0 and done["stats"]["context_tokens"] > 0

        ws.send(json.dumps({"type": "stats.subscribe", "interval_s": 0.1}))
        first, second = receive(ws), receive(ws)
        assert first["type"] == second["type"] == "stream.stats"
        assert first["stream"]["id"] == stream_id and first["stream"]["stats"]["questions_answered"] == 1
        ws.send(json.dumps({"type": "stats.unsubscribe"}))

    listed = service.http.get("/v1/streams").json()["streams"]
    mine = next(item for item in listed if item["id"] == stream_id)
    assert mine["state"] == "ended" and mine["stats"]["questions_answered"] == 1
    assert mine["stats"]["answer_latency"]["count"] == 1 and mine["stats"]["answer_latency"]["p95_ms"] > 0

    metrics = service.http.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    name = "streamguard_chunks_dropped_total"
    assert metric_value(text, name, stream=stream_id, reason="redundant") == stats["chunks_dropped_redundant"]
    assert metric_value(text, name, stream=stream_id, reason="shed") == 0
    assert metric_value(text, "streamguard_chunks_processed_total", stream=stream_id) == 3
    assert metric_value(text, "streamguard_questions_total", stream=stream_id) == 1
    assert "streamguard_answer_time_to_first_delta_seconds_count" in text

    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        deleted = service.http.delete(f"/v1/streams/{stream_id}")
        assert deleted.status_code == 200 and deleted.json()["state"] == "ended"
        assert receive(ws)["code"] == "stream_ended"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 4410
    assert service.http.get(f"/v1/streams/{stream_id}").status_code == 404
    assert metric_value(service.http.get("/metrics").text, name, stream=stream_id, reason="redundant") is None
    # the questions and answers outlive the stream
    log = service.http.get(f"/v1/streams/{stream_id}/answers").json()
    assert log["stream"]["state"] == "ended" and log["stream"]["source"] == str(clip)
    assert [(a["question_id"], a["question"], a["answer"]) for a in log["answers"]] == [
        ("q1", QUESTION, done["text"])
    ]


def test_bad_websocket_messages_each_get_their_own_error_and_the_socket_lives_on(service, clip):
    stream_id = create_file_stream(service, clip)["id"]
    processed_stream(service, stream_id)
    too_long = "x" * 2001  # configs/tiny.yaml: max_question_chars 2000
    cases = [
        ("not json {", "bad_json"),
        (b"\x00\x01", "bad_json"),
        (json.dumps([1, 2]), "invalid_message"),
        (json.dumps({"type": "question.shout", "id": "q"}), "unknown_type"),
        (json.dumps({"text": QUESTION}), "unknown_type"),
        (json.dumps({"type": "question.ask", "id": "q"}), "invalid_message"),
        (json.dumps({"type": "question.ask", "id": "q", "text": "hi", "max_tokens": 0}), "invalid_message"),
        (json.dumps({"type": "question.ask", "id": "q", "text": "hi", "colour": "red"}), "invalid_message"),
        (json.dumps({"type": "stats.subscribe", "interval_s": -1}), "invalid_message"),
        (json.dumps({"type": "question.cancel", "id": "never-asked"}), "unknown_question"),
        (json.dumps({"type": "question.ask", "id": "q", "text": too_long}), "question_too_long"),
        (json.dumps({"type": "question.ask", "id": "q", "text": "  "}), "empty_question"),
        (
            json.dumps({"type": "question.ask", "id": "q", "text": "y" * MAX_MESSAGE_BYTES}),
            "message_too_large",
        ),
    ]
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        for message, code in cases:
            ws.send(message)
            event = receive(ws)
            assert event["type"] == "error" and event["code"] == code, (message[:40], event)
            assert event["message"]
        ws.send(json.dumps({"type": "question.ask", "id": "q", "text": "hi", "max_tokens": 0}))
        assert receive(ws)["id"] == "q"  # field errors name the question they belong to
        ws.send(json.dumps({"type": "question.ask", "id": "ok", "text": QUESTION, "max_tokens": 4}))
        events = receive_until(ws, lambda event: event["type"] in ("answer.done", "error"))
        assert events[-1]["type"] == "answer.done"
    service.http.delete(f"/v1/streams/{stream_id}")


def test_a_connection_holds_a_bounded_number_of_distinct_questions(service, clip):
    stream_id = create_file_stream(service, clip)["id"]
    processed_stream(service, stream_id)
    ids = ["d", "d", "e1", "e2", "e3", "e4"]
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        # long answers (max_new_tokens 256), serialised on the stream: all still open when the burst lands
        for question_id in ids:
            ws.send(
                json.dumps({"type": "question.ask", "id": question_id, "text": QUESTION, "max_tokens": 256})
            )
        errors, done = [], set()
        while len(done) + len(errors) < len(ids):
            event = receive(ws)
            if event["type"] == "error":
                errors.append((event["id"], event["code"]))
                for question_id in ("d", "e1", "e2", "e3"):
                    ws.send(json.dumps({"type": "question.cancel", "id": question_id}))
            elif event["type"] == "answer.done":
                done.add(event["id"])
    assert sorted(errors) == [("d", "duplicate_question"), ("e4", "too_many_questions")]
    assert done == {"d", "e1", "e2", "e3"}
    service.http.delete(f"/v1/streams/{stream_id}")


def test_cancel_ends_an_answer_with_finish_reason_cancelled(service, clip):
    stream_id = create_file_stream(service, clip)["id"]
    processed_stream(service, stream_id)
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ws.send(json.dumps({"type": "question.ask", "id": "c", "text": QUESTION}))
        ws.send(json.dumps({"type": "question.cancel", "id": "c"}))
        events = receive_until(ws, lambda event: event["type"] in ("answer.done", "error"))
        # the cancel may land before the first token or after the last one; either way it ends cleanly
        assert events[-1]["type"] == "answer.done"
        assert events[-1]["stats"]["finish_reason"] in ("cancelled", "stop", "length")
    service.http.delete(f"/v1/streams/{stream_id}")


def test_the_cli_lists_streams_and_asks_questions(service, clip, capsys):
    stream_id = create_file_stream(service, clip)["id"]
    processed_stream(service, stream_id)
    target = ["--url", service.url, "--token", TOKEN]
    assert main(["streams", *target, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [stream["stats"]["chunks_processed"] for stream in listed if stream["id"] == stream_id] == [3]
    assert main(["streams", *target]) == 0
    assert main(["ask", stream_id, QUESTION, "--max-tokens", "4", *target]) == 0
    assert "4 tokens (length)" in capsys.readouterr().out
    assert main(["ask", stream_id, QUESTION, "--url", service.url, "--token", "wrong"]) == 1
    assert "invalid_token" in capsys.readouterr().err
    assert main(["ask", "nope", QUESTION, *target]) == 1
    assert "unknown_stream" in capsys.readouterr().err
    service.http.delete(f"/v1/streams/{stream_id}")


def test_a_source_that_breaks_puts_its_stream_in_error_and_keeps_what_it_had(service, tmp_path):
    whole = write_clip(tmp_path / "whole.mp4", seconds=8, motion="moving").read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(whole[: len(whole) // 2])  # the header says 8 s; half the data is there
    stream_id = create_file_stream(service, broken)["id"]

    def failed():
        stream = service.stream(stream_id)
        return stream if stream["state"] == "error" and stream["stats"]["chunks_processed"] >= 1 else None

    stream = wait_until(failed, "the stream to fail")
    assert "broken.mp4" in stream["error"]
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:  # what was prefilled can still be asked about
        ws.send(json.dumps({"type": "question.ask", "id": "q", "text": QUESTION, "max_tokens": 2}))
        assert receive_until(ws, lambda event: event["type"] != "answer.delta")[-1]["type"] == "answer.done"
    service.http.delete(f"/v1/streams/{stream_id}")


def test_unknown_streams_are_404_and_4404(service):
    for response in (
        service.http.get("/v1/streams/nope"),
        service.http.delete("/v1/streams/nope"),
        service.http.get("/v1/streams/nope/answers"),
    ):
        assert response.status_code == 404 and error_of(response)["code"] == "unknown_stream"
    with service.ws("/v1/streams/nope/ws") as ws:
        assert receive(ws)["code"] == "unknown_stream"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 4404


def test_tokens_are_required_everywhere_that_starts_work_or_reads_a_stream(service, clip):
    body = {"source": "file", "path": str(clip)}
    for headers, status, code in [
        ({}, 401, "missing_token"),
        ({"Authorization": "Bearer wrong"}, 403, "invalid_token"),
    ]:
        with httpx.Client(base_url=service.url, headers=headers) as http:
            calls = [
                http.post("/v1/streams", json=body),
                http.get("/v1/streams"),
                http.get("/v1/streams/any"),
                http.delete("/v1/streams/any"),
                http.get("/metrics"),
            ]
        for response in calls:
            assert response.status_code == status and error_of(response)["code"] == code, response.request.url
    health = httpx.get(f"{service.url}/healthz").json()
    assert health["status"] == "ok" and health["worker"]["streams"] >= 0

    stream_id = create_file_stream(service, clip)["id"]
    for token, close_code, code in [(None, 4401, "missing_token"), ("wrong", 4403, "invalid_token")]:
        with service.ws(f"/v1/streams/{stream_id}/ws", token=token) as ws:
            assert receive(ws)["code"] == code
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == close_code
    # browsers cannot set headers on a websocket: the token may come as ?token=
    with service.ws(f"/v1/streams/{stream_id}/ws", query_token=True) as ws:
        ws.send(json.dumps({"type": "stats.subscribe"}))
        assert receive(ws)["type"] == "stream.stats"
    service.http.delete(f"/v1/streams/{stream_id}")


def test_stream_requests_are_validated_with_clear_messages(service, tmp_path):
    http = service.http
    response = http.post("/v1/streams", json={"source": "rtsp", "url": "http://camera.local/live"})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_request"
    assert "rtsp://" in error_of(response)["message"] and "'http'" in error_of(response)["message"]
    response = http.post("/v1/streams", json={"source": "carrier-pigeon"})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_request"
    response = http.post("/v1/streams", json={"source": "file", "path": str(tmp_path / "missing.mp4")})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_source"
    assert "missing.mp4" in error_of(response)["message"]


def test_each_token_holds_a_bounded_number_of_streams(service, clip):
    first, second = (create_file_stream(service, clip, OTHER_TOKEN)["id"] for _ in range(2))
    response = service.http.post(
        "/v1/streams",
        json={"source": "file", "path": str(clip), "realtime": False},
        headers={"Authorization": f"Bearer {OTHER_TOKEN}"},
    )
    assert response.status_code == 429 and error_of(response)["code"] == "too_many_streams"
    third = create_file_stream(service, clip)["id"]  # another token has its own quota
    for stream_id in (first, second, third):
        assert service.http.delete(f"/v1/streams/{stream_id}").status_code == 200
    create_file_stream(service, clip, OTHER_TOKEN)  # a deleted stream frees its slot
    for stream in service.http.get("/v1/streams").json()["streams"]:
        service.http.delete(f"/v1/streams/{stream['id']}")


def test_file_sources_are_refused_unless_enabled(checkpoint, clip):
    with serve(create_app(tiny_settings(checkpoint))) as service:
        response = service.http.post("/v1/streams", json={"source": "file", "path": str(clip)})
    assert response.status_code == 403
    assert error_of(response)["code"] == "file_sources_disabled"
    assert "allow_file_sources" in error_of(response)["message"]


def test_an_overloaded_worker_sheds_chunks_and_counts_them(checkpoint, tmp_path):
    long_clip = write_clip(tmp_path / "long.mp4", seconds=16, motion="moving")
    settings = tiny_settings(checkpoint, allow_file_sources=True, max_pending_chunks=2)
    # the test hook slows the real model: it falls behind a file decoded as fast as it goes
    with serve(create_app(settings, chunk_delay_s=0.4)) as service:
        stream_id = create_file_stream(service, long_clip)["id"]
        depths = []

        def settled():
            stream = service.stream(stream_id)
            depths.append(stream["stats"]["queue_depth"])
            return processed_stream(service, stream_id) if stream["state"] == "ended" else None

        stats = wait_until(settled, "the overloaded stream to settle")["stats"]
        metrics = service.http.get("/metrics").text
    assert stats["chunks_received"] == 8 and stats["chunks_shed"] >= 1
    assert stats["chunks_processed"] + stats["chunks_shed"] == 8
    assert max(depths) <= 2  # memory stays bounded: at most max_pending_chunks wait
    name = "streamguard_chunks_dropped_total"
    assert metric_value(metrics, name, stream=stream_id, reason="shed") == stats["chunks_shed"]
    assert (
        metric_value(metrics, f"streamguard_service_{name.removeprefix('streamguard_')}", reason="shed")
        == stats["chunks_shed"]
    )


def test_tokens_in_request_lines_are_blanked_in_the_server_log():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s"',
        ("1.2.3.4", "GET", "/v1/x/ws?a=1&token=s3cret"),
        None,
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == '1.2.3.4 - "GET /v1/x/ws?a=1&token=***"'
