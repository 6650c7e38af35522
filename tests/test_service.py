"""The live service end to end: uvicorn on 127.0.0.1, the tiny real model, real files and
real websocket clients. Waits are bounded polls; nothing asserts on time."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest
from service_helpers import TOKEN, processed_stream, receive, receive_until, serve, tiny_settings, wait_until
from websockets.exceptions import ConnectionClosed

from streamguard.backbones import load_backbone
from streamguard.cli import main
from streamguard.engine.pipeline import create_pipeline
from streamguard.ingest.synthetic import write_clip
from streamguard.service import create_app
from streamguard.service.logs import RedactTokens
from streamguard.service.protocol import PROTOCOL_VERSION, protocol_schema

OTHER_TOKEN = "other-token"
MAX_MESSAGE_BYTES = 4096
MAX_STREAMS = 3
MAX_QUESTIONS_PER_STREAM = 6
QUESTION = "What is happening?"


@pytest.fixture(scope="module")
def backbone(checkpoint):
    """The model, loaded once for the tests that start a service of their own."""
    settings = tiny_settings(checkpoint)
    return load_backbone(settings.model, settings.chunk)


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
        max_streams=MAX_STREAMS,
        max_questions_per_stream=MAX_QUESTIONS_PER_STREAM,
        session={"max_new_tokens": 256},
    )
    with serve(create_app(settings)) as live:
        yield live


def create_file_stream(service, clip, token: str = TOKEN, realtime: bool = False) -> dict:
    response = service.http.post(
        "/v1/streams",
        json={"source": "file", "path": str(clip), "realtime": realtime},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def error_of(response) -> dict:
    return response.json()["error"]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()):
            return float(match.group(2))
    return None


def ask(ws, question_id: str, max_tokens: int, text: str = QUESTION) -> None:
    ws.send(json.dumps({"type": "question.ask", "id": question_id, "text": text, "max_tokens": max_tokens}))


def rss_bytes() -> int:
    """This process's resident memory (the service runs in it, on a thread)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_file_stream_answers_questions_and_reports_its_stats(service, clip):
    created = create_file_stream(service, clip)
    stream_id = created["id"]
    assert created["kind"] == "file" and created["state"] in ("starting", "live", "ended")
    assert created["stats"]["chunks_processed"] == 0
    assert created["chunk"] == {"seconds": 2.0, "fps": 2.0}
    assert created["model"]["random_weights"] is True  # the tiny model: its answers are noise
    # the tiny config names no A2V predictor: the stream says it scores against the mean audio
    assert created["pruning"] == {
        "method": "contextguard",
        "rho_sem": 0.5,
        "rho_spa": 0.1,
        "drop_policy": "current",
        "semantic_reference": "mean_audio",
    }
    assert created["sampling"] == {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0}
    stream = processed_stream(service, stream_id)
    stats = stream["stats"]
    assert stats["chunks_processed"] == 3 and stats["chunks_shed"] == 0
    assert stats["chunks_dropped_redundant"] >= 1  # a static picture
    # the pixel pre-filter catches the repeats before the vision encoder: each counts as dropped too
    assert 1 <= stats["chunks_encoder_skipped"] <= stats["chunks_dropped_redundant"]
    assert stats["tokens_in"] > stats["tokens_kept"] > 0 and 0 < stats["compression"] < 1
    assert stats["kv_tokens"] > 0 and stats["kv_bytes"] > 0 and stats["real_time_factor"] > 0
    overlay = stats["last_chunk"]
    assert overlay["index"] == 2 and len(overlay["grid"]) == 3 and len(overlay["resized_hw"]) == 2
    assert overlay["encoder_skipped"] and overlay["video_dropped"] and overlay["video_tokens_in"] > 0

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
    skipped = metric_value(text, "streamguard_encoder_skipped_total", stream=stream_id)
    assert skipped == stats["chunks_encoder_skipped"]
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


def test_an_error_event_echoes_the_event_id_of_the_message_that_caused_it(service, clip):
    stream_id = create_file_stream(service, clip)["id"]
    processed_stream(service, stream_id)
    cases = [  # (message, code, the question it names)
        ({"type": "question.shout", "event_id": "e1"}, "unknown_type", None),
        ({"type": "question.ask", "id": "q", "event_id": "e2"}, "invalid_message", "q"),  # no text
        ({"type": "stream.update", "event_id": "e3", "pruning": {"rho_sem": 2}}, "invalid_message", None),
        ({"type": "stream.update", "event_id": "e4"}, "invalid_message", None),  # changes nothing
        (
            {"type": "stream.update", "event_id": "e5", "sampling": {"max_tokens": 100000}},
            "invalid_message",
            None,
        ),
        (
            {"type": "question.cancel", "id": "never-asked", "event_id": "e6"},
            "unknown_question",
            "never-asked",
        ),
        (
            {"type": "question.ask", "id": "q", "text": "  ", "event_id": "e7"},
            "empty_question",
            "q",
        ),  # the worker's
        ({"type": "question.cancel", "id": "never-asked"}, "unknown_question", "never-asked"),
    ]
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        for message, code, question_id in cases:
            ws.send(json.dumps(message))
            error = receive(ws)
            assert (error["type"], error["code"], error["id"]) == ("error", code, question_id), (
                message,
                error,
            )
            assert error["event_id"] == message.get("event_id"), (message, error)
    service.http.delete(f"/v1/streams/{stream_id}")


def test_stream_update_changes_what_the_next_chunk_keeps_and_how_questions_are_sampled(service, tmp_path):
    # a moving picture: no chunk's video is dropped as redundant, so every chunk keeps some video
    clip = write_clip(tmp_path / "moving.mp4", seconds=12, motion="moving")
    stream_id = create_file_stream(service, clip, realtime=True)["id"]

    def chunk_after(index: int) -> dict | None:
        last = service.stream(stream_id)["stats"]["last_chunk"]
        return last if last is not None and last["index"] > index else None

    pruned = wait_until(lambda: chunk_after(-1), "a first chunk")
    assert 0 < pruned["video_tokens_kept"] < pruned["video_tokens_in"]  # ContextGuard's defaults
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ws.send(json.dumps({"type": "stream.update", "event_id": "u1", "pruning": {"method": "none"}}))
        updated = receive_until(ws, lambda event: event["type"] == "stream.updated")[-1]
        assert updated["event_id"] == "u1"
        assert updated["stream"]["pruning"]["method"] == "none"
        assert updated["stream"]["pruning"]["drop_policy"] == "off"  # full tokens never drop video
        last = updated["stream"]["stats"]["last_chunk"]
        full = wait_until(lambda: chunk_after(last["index"] if last else -1), "a chunk after the update")
        assert full["video_tokens_kept"] == full["video_tokens_in"] > pruned["video_tokens_kept"]

        update = {"pruning": {"method": "contextguard", "rho_sem": 0.9}, "sampling": {"max_tokens": 3}}
        ws.send(json.dumps({"type": "stream.update", "event_id": "u2", **update}))
        updated = receive_until(ws, lambda event: event["type"] == "stream.updated")[-1]
        assert updated["stream"]["pruning"]["rho_sem"] == 0.9
        assert updated["stream"]["sampling"]["max_tokens"] == 3
        ws.send(json.dumps({"type": "question.ask", "id": "q", "text": QUESTION}))  # no max_tokens of its own
        done = receive_until(ws, lambda event: event["type"] == "answer.done")[-1]
    assert done["stats"]["generated_tokens"] == 3 and done["stats"]["finish_reason"] == "length"
    usage = done["usage"]
    assert usage["generated_tokens"] == 3 and usage["context_tokens"] == done["stats"]["context_tokens"] > 0
    assert usage["prompt_tokens"] > 0
    service.http.delete(f"/v1/streams/{stream_id}")


def test_the_protocol_is_served_as_the_json_schema_of_the_service_models(service):
    response = httpx.get(f"{service.url}/v1/protocol.json")  # no token: it describes, starts nothing
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(protocol_schema()))
    assert response.json()["version"] == PROTOCOL_VERSION


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
    try:
        with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
            # a long answer (max_new_tokens 256), cancelled once its first delta is out
            ws.send(json.dumps({"type": "question.ask", "id": "c", "text": QUESTION}))
            assert receive(ws)["type"] == "answer.delta"
            ws.send(json.dumps({"type": "question.cancel", "id": "c"}))
            events = receive_until(ws, lambda event: event["type"] in ("answer.done", "error"))
            assert events[-1]["type"] == "answer.done"
            assert events[-1]["stats"]["finish_reason"] == "cancelled"
            assert events[-1]["stats"]["generated_tokens"] < 256
    finally:
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
                http.get("/v1/streams/any/answers"),
                http.get("/v1/stats"),
                http.get("/metrics"),
            ]
        for response in calls:
            assert response.status_code == status and error_of(response)["code"] == code, response.request.url
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}  # no details without one
    health = service.http.get("/healthz").json()
    assert health["status"] == "ok" and health["worker"]["streams"] >= 0 and health["worker"]["alive"]

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
    assert response.status_code == 422 and error_of(response)["code"] == "unsupported_scheme"
    assert "rtsp://" in error_of(response)["message"] and "'http'" in error_of(response)["message"]
    response = http.post("/v1/streams", json={"source": "rtsp", "url": "rtsp:///live"})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_request"
    assert "no host" in error_of(response)["message"]
    response = http.post("/v1/streams", json={"source": "carrier-pigeon"})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_request"
    response = http.post("/v1/streams", json={"source": "file", "path": str(tmp_path / "missing.mp4")})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_source"
    assert "missing.mp4" in error_of(response)["message"]


def test_each_token_holds_a_bounded_number_of_streams(service, clip):
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    # paced at real time: both still run when the third is asked for
    first, second = (create_file_stream(service, clip, OTHER_TOKEN, realtime=True)["id"] for _ in range(2))
    held = [first, second]
    try:
        response = service.http.post(
            "/v1/streams", json={"source": "file", "path": str(clip), "realtime": False}, headers=other
        )
        assert response.status_code == 429 and error_of(response)["code"] == "too_many_streams"
        third = create_file_stream(service, clip)["id"]  # another token has its own quota
        assert service.http.delete(f"/v1/streams/{third}").status_code == 200
        assert service.http.delete(f"/v1/streams/{first}", headers=other).status_code == 200
        held.append(create_file_stream(service, clip, OTHER_TOKEN)["id"])  # a deleted stream frees its slot
    finally:
        for stream_id in held:
            service.http.delete(f"/v1/streams/{stream_id}", headers=other)


def test_the_worker_holds_a_bounded_number_of_streams_whatever_the_tokens(service, clip):
    held = [create_file_stream(service, clip)["id"] for _ in range(2)]
    held.append(create_file_stream(service, clip, OTHER_TOKEN)["id"])  # MAX_STREAMS now
    response = service.http.post(
        "/v1/streams",
        json={"source": "file", "path": str(clip)},
        headers={"Authorization": f"Bearer {OTHER_TOKEN}"},  # within its own quota
    )
    assert response.status_code == 503 and error_of(response)["code"] == "service_full"
    assert "service.max_streams" in error_of(response)["message"]
    service.http.delete(f"/v1/streams/{held.pop()}", headers={"Authorization": f"Bearer {OTHER_TOKEN}"})
    for stream_id in held:
        service.http.delete(f"/v1/streams/{stream_id}")


def test_several_clients_watch_one_stream_and_answers_go_to_the_asker(service, clip):
    stream_id = create_file_stream(service, clip)["id"]
    processed_stream(service, stream_id)
    path = f"/v1/streams/{stream_id}/ws"
    with service.ws(path) as alice, service.ws(path) as bob:
        for ws in (alice, bob):  # both see the stream's stats
            ws.send(json.dumps({"type": "stats.subscribe", "interval_s": 0.1}))
            assert receive(ws)["stream"]["id"] == stream_id
            ws.send(json.dumps({"type": "stats.unsubscribe"}))
        ask(alice, "a1", max_tokens=4)
        alice_events = receive_until(
            alice, lambda event: event.get("id") == "a1" and event["type"] == "answer.done"
        )
        ask(bob, "b1", max_tokens=4)
        # had alice's answer gone to bob too, it would come before his own
        bob_events = receive_until(
            bob, lambda event: event.get("id") == "b1" and event["type"] == "answer.done"
        )
        assert {e["id"] for e in alice_events if e["type"].startswith("answer.")} == {"a1"}
        assert {e["id"] for e in bob_events if e["type"].startswith("answer.")} == {"b1"}

        # the stream's own bound on questions holds across its connections
        alice_ids, bob_ids = ["a2", "a3", "a4", "a5"], ["b2", "b3", "b4"]
        for question_id in alice_ids:  # long answers, served one after the other: all still open
            ask(alice, question_id, max_tokens=256)
        for question_id in bob_ids:
            ask(bob, question_id, max_tokens=256)
        refused = receive_until(bob, lambda event: event["type"] == "error")[-1]
        assert (refused["id"], refused["code"]) == ("b4", "too_many_questions")
        assert f"{MAX_QUESTIONS_PER_STREAM} questions" in refused["message"]
        for ws, ids in ((alice, alice_ids), (bob, bob_ids[:2])):
            for question_id in ids:
                ws.send(json.dumps({"type": "question.cancel", "id": question_id}))
            ended = set()
            while ended != set(ids):
                event = receive(ws)
                if event["type"] in ("answer.done", "error"):
                    ended.add(event["id"])
    service.http.delete(f"/v1/streams/{stream_id}")


def test_a_message_far_over_the_limit_is_refused_by_the_transport_before_it_is_buffered(service, clip):
    stream_id = create_file_stream(service, clip)["id"]
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ws.send(json.dumps({"type": "question.ask", "id": "q", "text": "y" * (2 * MAX_MESSAGE_BYTES)}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1009  # message too big: the app's limit is message_too_large
    service.http.delete(f"/v1/streams/{stream_id}")


def test_a_client_that_does_not_read_is_closed_as_a_slow_reader(service, clip):
    stream_id = create_file_stream(service, clip)["id"]
    junk = json.dumps({"type": "x" * (MAX_MESSAGE_BYTES - 100)})  # its error echoes the type back
    sends = 5000  # about 20 MB of errors: far more than the socket buffers and the outbox hold
    slow_readers = "streamguard_websocket_slow_readers_total"
    with service.ws(f"/v1/streams/{stream_id}/ws", receive_buffer=16 * 1024) as ws:
        for _ in range(sends):
            ws.send(junk)
        wait_until(
            lambda: metric_value(service.http.get("/metrics").text, slow_readers) == 1,
            "the service to give up on the client",
        )
        read = 0
        with pytest.raises(ConnectionClosed) as closed:  # now it reads: what was on the wire, then the close
            while True:
                assert receive(ws)["code"] == "unknown_type"
                read += 1
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4429, "slow_reader")
    assert read < sends  # what waited for it was dropped
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:  # the stream serves others as before
        ask(ws, "q", max_tokens=2)
        assert receive_until(ws, lambda event: event["type"] != "answer.delta")[-1]["type"] == "answer.done"
    service.http.delete(f"/v1/streams/{stream_id}")


def test_service_totals_count_every_stream_deleted_ones_included(service, clip):
    before = service.http.get("/v1/stats").json()
    stream_id = create_file_stream(service, clip)["id"]
    stats = processed_stream(service, stream_id)["stats"]
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ask(ws, "q", max_tokens=2)
        receive_until(ws, lambda event: event["type"] == "answer.done")
    held = service.http.get("/v1/stats").json()
    metrics = service.http.get("/metrics").text
    for name in (
        "chunks_received",
        "chunks_processed",
        "chunks_dropped_redundant",
        "chunks_encoder_skipped",
        "tokens_in",
        "tokens_kept",
    ):
        assert held[name] - before[name] == stats[name], name
    assert held["questions_answered"] - before["questions_answered"] == 1
    assert held["answer_latency"]["count"] == before["answer_latency"]["count"] + 1
    assert held["streams"] == {"ended": 1} and held["queue_depth"] == 0
    assert held["kv_tokens"] == stats["kv_tokens"] and held["kv_bytes"] == stats["kv_bytes"] > 0
    assert 0 < held["compression"] < 1
    for name, value in [
        ("kv_cache_tokens", held["kv_tokens"]),
        ("kv_cache_bytes", held["kv_bytes"]),
        ("queue_depth", 0),
        ("compression_ratio", held["compression"]),
    ]:
        assert metric_value(metrics, f"streamguard_service_{name}") == pytest.approx(value), name

    service.http.delete(f"/v1/streams/{stream_id}")
    after = service.http.get("/v1/stats").json()
    assert after["streams"] == {} and after["kv_tokens"] == after["kv_bytes"] == 0
    for name in ("chunks_received", "chunks_processed", "tokens_kept", "questions_answered"):
        assert after[name] == held[name], name  # a deleted stream's counts stay in the totals


def test_file_sources_are_refused_unless_enabled(checkpoint, clip):
    with serve(create_app(tiny_settings(checkpoint))) as service:
        response = service.http.post("/v1/streams", json={"source": "file", "path": str(clip)})
    assert response.status_code == 403
    assert error_of(response)["code"] == "file_sources_disabled"
    assert "allow_file_sources" in error_of(response)["message"]


def overloaded_run(service, clip) -> tuple[str, dict, list[int], int]:
    """Stream `clip` as fast as it decodes into a slowed worker until every chunk is processed
    or shed: the stream id, its final stats, its KV tokens seen and the peak RSS seen."""
    stream_id = create_file_stream(service, clip)["id"]
    kv_tokens, peak = [], rss_bytes()

    def settled():
        nonlocal peak
        stream = service.stream(stream_id)
        stats = stream["stats"]
        waiting = stats["chunks_received"] - stats["chunks_processed"] - stats["chunks_shed"]
        # every chunk received is processed, shed, pending, or the one the worker holds
        assert stats["queue_depth"] <= waiting <= stats["queue_depth"] + 1, stats
        kv_tokens.append(stats["kv_tokens"])
        peak = max(peak, rss_bytes())
        return stats if stream["state"] == "ended" and waiting == 0 else None

    return stream_id, wait_until(settled, "the overloaded stream to settle"), kv_tokens, peak


def test_an_overloaded_worker_sheds_chunks_and_accounts_for_every_one(checkpoint, backbone, tmp_path):
    # 30 chunks of VGA frames, 3.5 MiB each: a backlog that kept them would show in the RSS
    long_clip = write_clip(tmp_path / "long.mp4", seconds=60, width=640, height=480, motion="moving")
    budget = 100  # under two chunks (each has 50 audio tokens): the cache evicts all along the run
    settings = tiny_settings(
        checkpoint, allow_file_sources=True, max_pending_chunks=2, session={"token_budget": budget}
    )
    prefix = create_pipeline(backbone, settings).session.cache_tokens  # kept forever, not budgeted
    # the test hook slows the real model: it falls behind a file decoded as fast as it goes
    with serve(create_app(settings, backbone, chunk_delay_s=0.3)) as service:
        first, _, _, _ = overloaded_run(service, long_clip)  # warms the decoder and the allocator
        service.http.delete(f"/v1/streams/{first}")
        baseline = rss_bytes()
        stream_id, stats, kv_tokens, peak = overloaded_run(service, long_clip)
        metrics = service.http.get("/metrics").text
    assert stats["chunks_received"] == 30 and stats["chunks_shed"] >= 1
    assert stats["chunks_processed"] + stats["chunks_shed"] == 30 and stats["queue_depth"] == 0
    assert stats["tokens_kept"] > budget >= max(kv_tokens) - prefix  # evicted, never over the budget
    assert peak - baseline < 64 * 2**20  # the second run holds no more: far less than its frames
    name = "streamguard_chunks_dropped_total"
    assert metric_value(metrics, name, stream=stream_id, reason="shed") == stats["chunks_shed"]
    total_shed = metric_value(
        metrics, f"streamguard_service_{name.removeprefix('streamguard_')}", reason="shed"
    )
    assert total_shed is not None and total_shed > stats["chunks_shed"]  # the first run's count too


def wait_for_a_chunk_in_the_worker(service, stream_id: str) -> None:
    def prefilling():  # the worker holds a chunk: received, neither pending nor processed
        stats = service.stream(stream_id)["stats"]
        return (
            stats["chunks_received"] - stats["queue_depth"] - stats["chunks_shed"] == 1
            and not (stats["chunks_processed"])
        )

    wait_until(prefilling, "a chunk in the worker")


def test_a_stream_deleted_while_its_chunk_prefills_leaves_no_metrics_behind(checkpoint, backbone, clip):
    settings = tiny_settings(checkpoint, allow_file_sources=True)
    with serve(create_app(settings, backbone, chunk_delay_s=2.0)) as service:
        stream_id = create_file_stream(service, clip)["id"]
        wait_for_a_chunk_in_the_worker(service, stream_id)
        final = service.http.delete(f"/v1/streams/{stream_id}").json()
        assert final["stats"]["chunks_processed"] == 0
        wait_until(
            lambda: service.http.get("/healthz").json()["worker"]["chunks_processed"] == 1,
            "the worker to finish the chunk",
        )
        # a new stream is set up on the worker after that chunk: once it is open, the chunk's
        # callback has run on the loop
        other = create_file_stream(service, clip)["id"]
        text = service.http.get("/metrics").text
        service.http.delete(f"/v1/streams/{other}")
    assert f'stream="{stream_id}"' not in text


def test_totals_add_up_after_streams_deleted_while_their_chunk_prefills(checkpoint, backbone, clip):
    settings = tiny_settings(checkpoint, allow_file_sources=True)
    with serve(create_app(settings, backbone, chunk_delay_s=1.0)) as service:
        deleted = []
        for _ in range(3):
            stream_id = create_file_stream(service, clip)["id"]
            wait_for_a_chunk_in_the_worker(service, stream_id)
            deleted.append(service.http.delete(f"/v1/streams/{stream_id}").json()["stats"])
        totals = service.http.get("/v1/stats").json()
        metrics = service.http.get("/metrics").text
    for stats in deleted:  # the chunk in the worker, and any pending behind it
        assert stats["chunks_discarded"] >= 1 and stats["queue_depth"] == 0
        assert stats["chunks_received"] == (
            stats["chunks_processed"] + stats["chunks_shed"] + stats["chunks_discarded"]
        )
    assert totals["chunks_discarded"] == sum(stats["chunks_discarded"] for stats in deleted)
    assert totals["chunks_received"] == (
        totals["chunks_processed"]
        + totals["chunks_shed"]
        + totals["queue_depth"]
        + totals["chunks_discarded"]
    )
    total = metric_value(metrics, "streamguard_service_chunks_dropped_total", reason="discarded")
    assert total == totals["chunks_discarded"]


def test_an_ended_stream_nobody_watches_is_deleted_after_its_ttl_and_its_answers_stay(
    checkpoint, backbone, clip
):
    settings = tiny_settings(checkpoint, allow_file_sources=True, ended_stream_ttl_s=0.5)
    with serve(create_app(settings, backbone)) as service:
        stream_id = create_file_stream(service, clip, realtime=True)["id"]  # ends after 6 s
        with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
            processed_stream(service, stream_id)  # ended, and kept while a client is on it
            ask(ws, "q", max_tokens=2)
            assert (
                receive_until(ws, lambda event: event["type"] != "answer.delta")[-1]["type"] == "answer.done"
            )
        # the client left the ended stream: it goes after the TTL, its answer log stays
        wait_until(
            lambda: service.http.get(f"/v1/streams/{stream_id}").status_code == 404, "the stream to expire"
        )
        log = service.http.get(f"/v1/streams/{stream_id}/answers").json()
        text = service.http.get("/metrics").text
    assert log["stream"]["state"] == "ended" and [a["question_id"] for a in log["answers"]] == ["q"]
    assert f'stream="{stream_id}"' not in text


def test_healthz_says_down_once_the_worker_is_gone(checkpoint, backbone):
    app = create_app(tiny_settings(checkpoint), backbone)
    with serve(app) as service:
        assert service.http.get("/healthz").json()["status"] == "ok"
        asyncio.run(app.state.registry.scheduler.stop())  # the worker thread ends
        response = service.http.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "down" and not response.json()["worker"]["alive"]


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
