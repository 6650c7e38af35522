"""Long memory through the live service: `recall` on `question.ask`, what `answer.done` says was
recalled, the stats and metrics, a deleted stream's files, a restarted worker's orphans.
Uvicorn on 127.0.0.1, the tiny real model, a real media file; waits are bounded polls."""

from __future__ import annotations

import json

import pytest
from service_helpers import processed_stream, receive_until, serve, tiny_settings

from streamguard.ingest.synthetic import write_clip
from streamguard.memory.manager import OWNER_FILE, _host_prefix
from streamguard.service import create_app

RECALL_TOKENS = 250  # more than two chunks (at most 64 video + 50 audio tokens each), less than five
CLIP_SECONDS = 30


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=CLIP_SECONDS, motion="moving")


def memory_service(checkpoint, root, enabled: bool = True):
    settings = tiny_settings(
        checkpoint,
        allow_file_sources=True,
        max_pending_chunks=CLIP_SECONDS,  # a file read at full speed: keep every chunk
        session={"token_budget": 300},
        memory={
            "enabled": enabled,
            "root": str(root),
            "recall_tokens": RECALL_TOKENS,
            "span_tokens": RECALL_TOKENS,
            "host_bytes": 20_000,
        },
    )
    return serve(create_app(settings))


def processed_file_stream(service, clip) -> dict:
    response = service.http.post("/v1/streams", json={"source": "file", "path": str(clip), "realtime": False})
    assert response.status_code == 201, response.text
    return processed_stream(service, response.json()["id"])


def answer(ws, question_id: str, recall=None) -> dict:
    message = {"type": "question.ask", "id": question_id, "text": "When did it move?", "max_tokens": 2}
    if recall is not None:
        message["recall"] = recall
    ws.send(json.dumps(message))
    return receive_until(ws, lambda event: event["type"] in ("answer.done", "error"))[-1]


def test_questions_recall_offloaded_chunks_and_the_service_shows_where_its_memory_lives(
    checkpoint, clip, tmp_path
):
    root = tmp_path / "memory"
    orphan = root / f"{_host_prefix()}1234567-crashed"  # a crashed worker's folder: nobody holds it
    (orphan / "some-stream").mkdir(parents=True)
    (orphan / OWNER_FILE).write_text("")
    with memory_service(checkpoint, root) as service:
        assert not orphan.exists()
        stream = processed_file_stream(service, clip)
        memory = stream["stats"]["memory"]
        assert memory["enabled"] and memory["chunks_offloaded"] >= 10 and memory["chunks_held"] >= 10
        assert memory["device_bytes"] == stream["stats"]["kv_bytes"] > 0
        assert memory["host_bytes"] <= 20_000 < memory["disk_bytes"]  # the older ones spilled to disk
        (folder,) = root.glob(f"*/{stream['id']}")
        assert sum(f.stat().st_size for f in folder.iterdir()) == memory["disk_bytes"]

        with service.ws(f"/v1/streams/{stream['id']}/ws") as ws:
            auto = answer(ws, "auto")  # no recall given: "auto" on a stream with memory
            assert auto["type"] == "answer.done" and auto["recall"]["mode"] == "auto"
            assert auto["recall"]["spans"] and 0 < auto["recall"]["tokens"] <= RECALL_TOKENS

            span = answer(ws, "span", {"from": 0, "to": 4})
            assert [(s["from_s"], s["to_s"], s["chunks"]) for s in span["recall"]["spans"]] == [(0.0, 4.0, 2)]
            assert span["recall"]["spans"][0]["from_wall"] < span["recall"]["spans"][0]["to_wall"]
            # wall-clock spans (a file replayed at full speed took seconds: the chunks' wall
            # times say when they reached the cache, not what time their pictures show)
            before = answer(ws, "before", {"from": "2000-01-01T00:00:00Z", "to": "2000-01-01T00:05:00Z"})
            assert before["type"] == "answer.done" and before["recall"]["spans"] == []

            recent = answer(ws, "recent", "recent")
            assert recent["recall"] == {
                "mode": "recent",
                "spans": [],
                "tokens": 0,
                "latency_ms": recent["recall"]["latency_ms"],
            }

            for recall, code in (
                ("everything", "invalid_recall"),
                ({"from": 10, "to": 2}, "invalid_recall"),
                ({"from": "2026-12-02T14:30:00"}, "invalid_recall"),
                ({"from": 40, "to": -5}, "invalid_recall"),  # resolved on the worker: 40 s > 25 s (now - 5)
                ({"from": 0}, "recall_too_large"),  # the whole stream: over memory.span_tokens
                ({"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}, "recall_too_large"),
            ):
                error = answer(ws, "bad", recall)
                assert (error["type"], error["code"], error["id"]) == ("error", code, "bad"), error
            ws.send(json.dumps({"type": "stats.subscribe", "interval_s": 0.1}))
            stats = receive_until(ws, lambda event: event["type"] == "stream.stats")[-1]
            assert (
                stats["stream"]["stats"]["memory"]["recalls"] == 3
            )  # auto, two spans ("recent" loads nothing)
            assert stats["stream"]["stats"]["memory"]["recall_latency"]["count"] == 3

        totals = service.http.get("/v1/stats").json()["memory"]
        assert totals["disk_bytes"] == memory["disk_bytes"] and totals["recalls"] == 3
        metrics = service.http.get("/metrics").text
        assert f'streamguard_recalls_total{{mode="auto",stream="{stream["id"]}"}} 1.0' in metrics
        assert f'streamguard_recalls_total{{mode="span",stream="{stream["id"]}"}} 2.0' in metrics
        assert (
            f'streamguard_memory_disk_bytes{{stream="{stream["id"]}"}} {float(memory["disk_bytes"])}'
            in metrics
        )
        assert f"streamguard_service_memory_disk_bytes {float(memory['disk_bytes'])}" in metrics
        assert "streamguard_recall_seconds_count 3.0" in metrics

        assert service.http.delete(f"/v1/streams/{stream['id']}").status_code == 200
        assert not folder.exists()
    assert list(root.iterdir()) == []  # a worker that stops cleanly leaves nothing


def test_a_stream_without_memory_answers_recent_and_refuses_other_recalls(checkpoint, clip, tmp_path):
    with memory_service(checkpoint, tmp_path / "memory", enabled=False) as service:
        stream = processed_file_stream(service, clip)
        assert stream["stats"]["memory"]["enabled"] is False
        with service.ws(f"/v1/streams/{stream['id']}/ws") as ws:
            done = answer(ws, "plain")
            assert done["type"] == "answer.done" and done["recall"] is None
            assert answer(ws, "recent", "recent")["type"] == "answer.done"
            error = answer(ws, "auto", "auto")
            assert (error["type"], error["code"]) == ("error", "memory_disabled")
            assert answer(ws, "again")["type"] == "answer.done"
