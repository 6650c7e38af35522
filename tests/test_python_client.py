"""The Python client (clients/python, `streamguard_client`) against the live service: uvicorn on
127.0.0.1 with the tiny real model, real files, real websockets, and a TCP relay a test can cut."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
from proxy_helpers import tcp_proxy
from rtsp_helpers import rtsp_camera
from service_helpers import (
    TIMEOUT_S,
    TOKEN,
    console_script,
    eventually,
    serve,
    serve_process,
    tiny_settings,
    wait_until,
)
from streamguard_client import (
    ERRORS,
    Backoff,
    Client,
    ConnectionLostError,
    ServiceError,
    StreamGuard,
    UnreachableError,
)
from streamguard_client.errors import (
    EmptyQuestionError,
    InvalidMessageError,
    InvalidTokenError,
    UnknownStreamError,
    UnsupportedSchemeError,
)

from streamguard.service import create_app
from streamguard.service.protocol import PROTOCOL_VERSION, ErrorCode

QUESTION = "What is happening?"
ROOT = Path(__file__).resolve().parents[1]
CLIENT_PACKAGE = ROOT / "clients" / "python"
INSTALL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def service(checkpoint):
    settings = tiny_settings(checkpoint, allow_file_sources=True, session={"max_new_tokens": 256})
    with serve(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def moving(clip) -> str:
    return str(clip("moving.mp4", 6, motion="moving"))


def processed(stream: dict[str, Any]) -> bool:
    stats = stream["stats"]
    return (
        stream["state"] == "ended"
        and stats["chunks_processed"] + stats["chunks_shed"] == stats["chunks_received"] > 0
    )


async def processed_stream(client: StreamGuard, stream_id: str) -> dict[str, Any] | None:
    """The stream once `processed`, else None (for `eventually`)."""
    stream = await client.stream(stream_id)
    return stream if processed(stream) else None


def test_every_service_error_code_has_an_exception_of_its_own():
    assert set(ERRORS) == set(get_args(ErrorCode))
    assert len(set(ERRORS.values())) == len(ERRORS)
    assert all(ERRORS[code].code == code and issubclass(ERRORS[code], ServiceError) for code in ERRORS)


async def test_the_async_client_opens_asks_cancels_watches_and_deletes(service, moving):
    async with StreamGuard(service.url, TOKEN) as client:
        stream_id = (await client.open_file(moving, realtime=False))["id"]
        assert stream_id in {stream["id"] for stream in await client.streams()}
        await eventually(lambda: processed_stream(client, stream_id), "the file to be processed")

        async with client.connect(stream_id) as socket:
            answer = socket.ask(QUESTION, max_tokens=4)
            deltas = [delta async for delta in answer]
            assert deltas and "".join(deltas) == answer.text
            assert answer.stats is not None and answer.stats["generated_tokens"] == 4
            assert answer.stats["finish_reason"] == "length" and answer.stats["context_tokens"] > 0
            assert answer.usage is not None and answer.usage["generated_tokens"] == 4

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
            with pytest.raises(InvalidMessageError) as refused:  # the error its event_id came back on
                await anext(socket.stats(interval_s=0.0001))
            assert refused.value.event_id is not None

            updated = await socket.update(pruning={"method": "none"}, sampling={"max_tokens": 2})
            assert updated["pruning"]["method"] == "none" and updated["sampling"]["max_tokens"] == 2
            with pytest.raises(InvalidMessageError) as invalid:
                await socket.update(pruning={"rho_sem": 7})
            assert invalid.value.event_id is not None and "rho_sem" in invalid.value.message
            assert (await socket.ask(QUESTION).result()).stats["generated_tokens"] == 2

        logged = await client.answers(stream_id)
        assert [entry["answer"] for entry in logged["answers"]][:1] == [answer.text]
        assert (await client.service_stats())["questions_answered"] >= 2
        assert (await client.protocol())["version"] == PROTOCOL_VERSION
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
            await eventually(lambda: processed_stream(client, stream_id), "the file to be processed")
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


async def test_a_service_that_cannot_be_reached_is_retried_then_unreachable(service):
    with tcp_proxy(urlsplit(service.url).port) as proxy:
        url = proxy.url
    # the relay is gone: nothing listens on its port any more
    async with StreamGuard(url, TOKEN, backoff=Backoff(initial_s=0.01, attempts=2)) as client:
        with pytest.raises(UnreachableError, match="cannot reach"):
            await client.streams()
        with pytest.raises(UnreachableError, match="cannot reach"):
            await client.ask("any", QUESTION).result()


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


# -- streamguard-publish ----------------------------------------------------------------------


class Publishing:
    """`streamguard-publish` running: `line(pattern)` waits for a line of its output."""

    def __init__(self, process: subprocess.Popen[str]):
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, pattern: str) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in: {self.seen}") from None
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match


@contextmanager
def publishing(args: list[str], env: dict[str, str]) -> Iterator[Publishing]:
    process = subprocess.Popen(
        [*console_script("streamguard-publish", "streamguard_client.publish"), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield Publishing(process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT_S)


def test_publish_sends_a_looped_file_over_webrtc_and_publishes_again_when_its_stream_goes(service, clip):
    looped = clip("loop.mp4", 3, motion="moving")  # shorter than the stream: it loops
    args = [str(looped), "--loop", "--url", service.url, "--interval", "0.5"]
    with publishing(args, {"STREAMGUARD_TOKEN": TOKEN}) as publisher:
        first = publisher.line(r"^stream (\S+) webrtc audio\+video")[1]

        def chunks(stream_id: str, count: int) -> dict[str, Any] | None:
            stream = service.stream(stream_id)
            return stream if stream["stats"]["chunks_processed"] >= count else None

        stream = wait_until(lambda: chunks(first, 3), "three chunks of the looped file")
        # the timeline ran on across the loop: no chunk was cut short or shed
        assert stream["state"] == "live" and stream["stats"]["last_chunk"]["start"] >= 4.0
        assert stream["stats"]["chunks_shed"] == 0 and not stream["stats"]["last_chunk"]["audio_missing"]
        publisher.line(rf"^{first} live: chunks [1-9]")  # its live stats

        assert service.http.delete(f"/v1/streams/{first}").status_code == 200
        publisher.line(r"publishing again in")
        second = publisher.line(r"^stream (\S+) webrtc")[1]
        assert second != first
        wait_until(lambda: chunks(second, 1), "a chunk of the new stream")
        publisher.process.send_signal(signal.SIGINT)
        assert publisher.process.wait(TIMEOUT_S) == 0
    ended = wait_until(lambda: (s := service.stream(second))["state"] == "ended" and s, "the stream to end")
    service.http.delete(f"/v1/streams/{ended['id']}")


def test_publish_publishes_again_when_the_connection_to_the_service_drops(service, clip):
    looped = clip("loop.mp4", 3, motion="moving")
    with tcp_proxy(urlsplit(service.url).port) as proxy:
        args = [str(looped), "--loop", "--url", proxy.url, "--interval", "0.5"]
        with publishing(args, {"STREAMGUARD_TOKEN": TOKEN}) as publisher:
            first = publisher.line(r"^stream (\S+) webrtc")[1]
            publisher.line(rf"^{first} ")  # its stats flow over the relayed websocket
            proxy.cut()  # the network drops: the websocket dies without a close frame
            publisher.line(r"publishing again in")
            second = publisher.line(r"^stream (\S+) webrtc")[1]
            wait_until(lambda: service.stream(second)["stats"]["chunks_processed"] >= 1, "the new stream")
    for stream_id in (first, second):
        service.http.delete(f"/v1/streams/{stream_id}")


def test_publish_ends_with_a_file_that_is_not_looped(service, clip):
    once = clip("once.mp4", 2, motion="moving")
    with publishing([str(once)], {"STREAMGUARD_URL": service.url, "STREAMGUARD_TOKEN": TOKEN}) as publisher:
        stream_id = publisher.line(r"^stream (\S+) webrtc")[1]
        assert publisher.process.wait(TIMEOUT_S) == 0, publisher.seen
    ended = wait_until(
        lambda: (s := service.stream(stream_id))["state"] == "ended" and s, "the stream to end"
    )
    assert ended["stats"]["chunks_received"] >= 1
    service.http.delete(f"/v1/streams/{stream_id}")


# -- the standalone package ----------------------------------------------------------------


@pytest.mark.rtsp
def test_the_client_package_installs_without_torch_and_drives_a_real_serve(tmp_path):
    with rtsp_camera() as camera:  # skips here, before the install, where the camera cannot run
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT_S)
        python = str(venv / "bin" / "python")
        # nothing of this checkout on the path: the venv sees only what it installed
        clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        # built from a copy: a build leaves build/ and egg-info beside the sources
        package = shutil.copytree(
            CLIENT_PACKAGE,
            tmp_path / "package",
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )
        installed = subprocess.run(
            [python, "-m", "pip", "install", "-q", str(package)],
            env=clean,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        listed = subprocess.run(
            [python, "-m", "pip", "list", "--format=json"],
            env=clean,
            capture_output=True,
            text=True,
            check=True,
        )
        packages = {package["name"].lower() for package in json.loads(listed.stdout)}
        assert {"streamguard-client", "httpx", "websockets"} <= packages
        assert not packages & {"torch", "transformers", "streamguard", "aiortc", "av"}, sorted(packages)
        without_extra = subprocess.run(
            [str(venv / "bin" / "streamguard-publish"), "clip.mp4"], env=clean, capture_output=True, text=True
        )
        assert without_extra.returncode != 0 and "streamguard-client[publish]" in without_extra.stderr

        env = {
            "STREAMGUARD_CACHE": str(tmp_path / "cache"),  # the tiny model is built here on first use
            "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN]),
        }
        with serve_process(tmp_path, ["--config", "tiny"], env) as serving:
            script = Path(__file__).with_name("client_in_venv.py")
            ran = subprocess.run(
                [python, str(script), serving.service.url, TOKEN, camera.url],
                env=clean,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
            assert ran.returncode == 0, ran.stdout + ran.stderr + serving.output()
    report = json.loads(ran.stdout)
    assert report["modules"] == {"torch": False, "streamguard": False}
    assert report["deltas"] and "".join(report["deltas"]) == report["answer"]["text"]
    assert report["answer"]["type"] == "answer.done" and report["answer"]["stats"]["generated_tokens"] == 4
    assert report["stats"]["chunks_processed"] >= 1 and report["stats"]["questions_answered"] == 1
    assert report["stream_id"] in report["listed"] and report["deleted"] == report["stream_id"]
    assert report["after_delete"] == "unknown_stream"


@pytest.mark.rtsp
def test_the_readme_example_runs_as_written_against_a_live_service(service):
    examples = [
        re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.S)[1]
        for text, heading in (
            ((ROOT / "README.md").read_text(), "## Python client"),
            ((CLIENT_PACKAGE / "README.md").read_text(), "## Example"),
        )
    ]
    assert examples[0] == examples[1]  # one example, in both READMEs
    with rtsp_camera() as camera:
        script = examples[0]
        for placeholder, real in (
            ("http://127.0.0.1:8000", service.url),
            ("streamguard-dev-token", TOKEN),
            ("rtsp://camera.local/stream1", camera.url),
        ):
            assert placeholder in script
            script = script.replace(placeholder, real)
        ran = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT_S
        )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "'finish_reason'" in ran.stdout and "'prompt_tokens'" in ran.stdout
