"""The Python client (clients/python, `streamguard_client`) against the live service: uvicorn on
127.0.0.1 with the tiny real model, real files, real websockets, and a TCP relay a test can cut."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
from proxy_helpers import tcp_proxy
from service_helpers import TIMEOUT_S, TOKEN, serve, tiny_settings, wait_until
from streamguard_client import ERRORS, Backoff, Client, ConnectionLostError, ServiceError, StreamGuard
from streamguard_client.errors import (
    EmptyQuestionError,
    InvalidTokenError,
    UnknownStreamError,
    UnsupportedSchemeError,
)

from streamguard.backbones.tiny import build_tiny_checkpoint
from streamguard.service import create_app
from streamguard.service.protocol import ErrorCode

QUESTION = "What is happening?"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    checkpoint = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    settings = tiny_settings(checkpoint, allow_file_sources=True, session={"max_new_tokens": 256})
    with serve(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def moving(clip) -> str:
    return str(clip("moving.mp4", 6, motion="moving"))


async def eventually(
    read: Callable[[], Awaitable[dict[str, Any]]], done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll `read` until `done` holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not done(value := await read()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


def processed(stream: dict[str, Any]) -> bool:
    stats = stream["stats"]
    return (
        stream["state"] == "ended"
        and stats["chunks_processed"] + stats["chunks_shed"] == stats["chunks_received"] > 0
    )


def test_every_service_error_code_has_an_exception_of_its_own():
    assert set(ERRORS) == set(get_args(ErrorCode))
    assert len(set(ERRORS.values())) == len(ERRORS)
    assert all(ERRORS[code].code == code and issubclass(ERRORS[code], ServiceError) for code in ERRORS)


async def test_the_async_client_opens_asks_cancels_watches_and_deletes(service, moving):
    async with StreamGuard(service.url, TOKEN) as client:
        stream_id = (await client.open_file(moving, realtime=False))["id"]
        assert stream_id in {stream["id"] for stream in await client.streams()}
        await eventually(lambda: client.stream(stream_id), processed, "the file to be processed")

        async with client.connect(stream_id) as socket:
            answer = socket.ask(QUESTION, max_tokens=4)
            deltas = [delta async for delta in answer]
            assert deltas and "".join(deltas) == answer.text
            assert answer.stats is not None and answer.stats["generated_tokens"] == 4
            assert answer.stats["finish_reason"] == "length" and answer.stats["context_tokens"] > 0

            with pytest.raises(EmptyQuestionError) as empty:  # refused, and the socket lives on
                await socket.ask("   ").result()
            assert empty.value.question_id is not None

            long = socket.ask(QUESTION, max_tokens=256)
            deltas_of_long = aiter(long)
            await anext(deltas_of_long)
            await long.cancel()
            async for _ in deltas_of_long:
                pass
            assert long.stats is not None and long.stats["finish_reason"] == "cancelled"

            stats = socket.stats(interval_s=0.1)
            watched = await anext(stats)
            await stats.aclose()
            assert watched["id"] == stream_id and watched["stats"]["questions_answered"] >= 2

        logged = await client.answers(stream_id)
        assert [entry["answer"] for entry in logged["answers"]][:1] == [answer.text]
        assert (await client.service_stats())["questions_answered"] >= 2
        assert (await client.delete(stream_id))["id"] == stream_id

        with pytest.raises(UnknownStreamError) as gone:
            await client.stream(stream_id)
        assert gone.value.status == 404 and stream_id in gone.value.message
        with pytest.raises(UnknownStreamError):  # the websocket's refusal (4404), as the same class
            await client.ask(stream_id, QUESTION).result()
        with pytest.raises(UnsupportedSchemeError):
            await client.open_rtsp("http://camera.local/1")

    async with StreamGuard(service.url, "wrong-token") as intruder:
        with pytest.raises(InvalidTokenError) as refused:
            await intruder.streams()
        assert refused.value.status == 403


async def test_a_dropped_socket_reconnects_and_resubscribes(service, moving):
    with tcp_proxy(urlsplit(service.url).port) as proxy:
        async with StreamGuard(proxy.url, TOKEN, backoff=Backoff(initial_s=0.05)) as client:
            stream_id = (await client.open_file(moving, realtime=False))["id"]
            await eventually(lambda: client.stream(stream_id), processed, "the file to be processed")
            async with client.connect(stream_id) as socket:
                stats = socket.stats(interval_s=0.1)
                await anext(stats)
                long = socket.ask(QUESTION, max_tokens=256)
                deltas = aiter(long)
                await anext(deltas)
                assert proxy.cut() >= 2  # the websocket's two legs, and any idle HTTP connection
                with pytest.raises(ConnectionLostError):  # the service cancels it as the socket goes
                    async for _ in deltas:
                        pass
                while socket.reconnects == 0:  # events sent before the cut may still arrive
                    await anext(stats)
                assert (await anext(stats))["id"] == stream_id  # subscribed again
                again = await socket.ask(QUESTION, max_tokens=2).result()
                assert again.stats is not None and again.stats["generated_tokens"] == 2
            await client.delete(stream_id)


def test_the_sync_client_is_the_same_client_blocking(service, moving):
    with Client(service.url, TOKEN) as client:
        stream_id = client.open_file(moving, realtime=False)["id"]
        wait_until(lambda: processed(client.stream(stream_id)), "the file to be processed")
        answer = client.ask(stream_id, QUESTION, max_tokens=3)
        assert "".join(answer) == answer.text and answer.stats["generated_tokens"] == 3
        watch = client.watch(stream_id, interval_s=0.1)
        assert next(watch)["stats"]["questions_answered"] == 1
        watch.close()
        client.delete(stream_id)
        assert stream_id not in {stream["id"] for stream in client.streams()}
