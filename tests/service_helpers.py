"""Helpers to run the real service in tests: the tiny real model, uvicorn on a free 127.0.0.1
port in a background thread (configured as `streamguard serve` configures it) or `streamguard
serve` as a process of its own, and bounded waits (no test sleeps for a fixed time)."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from websockets.sync.client import ClientConnection, connect

from streamguard.config import Settings, load_settings
from streamguard.ingest.chunker import AVChunk
from streamguard.service import server_config

T = TypeVar("T")

TOKEN = "test-token"
# An admin token every test service also knows: it sees every stream, to clean them all up.
CLEANUP_TOKEN = {"token": "test-cleanup-token", "name": "tests", "role": "admin"}
TIMEOUT_S = 60.0
# service.webrtc_media_timeout_s in the tests that let a peer go silent: three chunks, so a
# sending peer's chunks (every 2 s) stay well within it on a loaded machine.
MEDIA_TIMEOUT_S = 6.0
# How long after a peer's last frame its stream has ended: the timeout, and slack for a loaded
# machine.
ENDED_WITHIN_S = MEDIA_TIMEOUT_S + 5.0


def tiny_settings(
    checkpoint: Path,
    session: dict[str, Any] | None = None,
    memory: dict[str, Any] | None = None,
    config: str = "tiny",
    **service: Any,
) -> Settings:
    """configs/tiny.yaml (or another tiny `config`) on a checkpoint built by `build_tiny_checkpoint`
    (or its backbone's builder), one known token, file sources read from the temporary folder
    tests write their media to; keyword arguments override `service:` settings, `session` and
    `memory` those sections."""
    return load_settings(
        config,
        model={"path": str(checkpoint)},
        service={
            "file_root": tempfile.gettempdir(),
            **service,
            "tokens": [*service.get("tokens", [TOKEN]), CLEANUP_TOKEN],
        },
        session=session or {},
        memory=memory or {},
    )


def random_chunks(count: int, seed: int = 0, height: int = 84, width: int = 112) -> list[AVChunk]:
    """Chunks of random frames and noise: every chunk differs, so none is dropped as redundant."""
    rng = np.random.default_rng(seed)
    return [
        AVChunk(
            index=i,
            start=2.0 * i,
            frames=[rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)],
            audio=(rng.standard_normal(32000) * 0.1).astype(np.float32),
        )
        for i in range(count)
    ]


def wait_until(check: Callable[[], T | None], what: str, timeout_s: float = TIMEOUT_S) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def processed_stream(service, stream_id: str) -> dict:
    """The stream once its source has ended and every chunk it sent was processed or shed."""

    def settled():
        stream = service.stream(stream_id)
        stats = stream["stats"]
        done = stats["chunks_processed"] + stats["chunks_shed"] == stats["chunks_received"] > 0
        return stream if stream["state"] == "ended" and done else None

    return wait_until(settled, "the file stream to be processed")


async def eventually(
    check: Callable[[], T | Awaitable[T | None] | None], what: str, timeout_s: float = TIMEOUT_S
) -> T:
    """`wait_until` for async tests: poll `check` (plain, or returning an awaitable) on the
    running loop until it gives something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


class LiveService:
    """A running service: `url`, an authenticated `http` client and websocket helpers."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT_S
        )

    def ws(
        self,
        path: str,
        token: str | None = TOKEN,
        query_token: bool = False,
        receive_buffer: int | None = None,
    ) -> ClientConnection:
        """A websocket client; `receive_buffer` sets its socket's SO_RCVBUF and turns compression
        off: a client whose buffers fill soon, and predictably, when it does not read."""
        url = "ws" + self.url.removeprefix("http") + path
        headers = {}
        if token is not None and query_token:
            url += f"?token={token}"
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        sock, compression = None, "deflate"
        if receive_buffer is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.connect((urlsplit(self.url).hostname, urlsplit(self.url).port))
            compression = None
        return connect(
            url,
            sock=sock,
            compression=compression,
            additional_headers=headers,
            open_timeout=TIMEOUT_S,
            max_size=None,
        )

    def delete_every_stream(self) -> None:
        """Delete whatever streams are left, whichever token opened them."""
        admin = {"Authorization": f"Bearer {CLEANUP_TOKEN['token']}"}
        for stream in self.http.get("/v1/streams", headers=admin).json()["streams"]:
            self.http.delete(f"/v1/streams/{stream['id']}", headers=admin)

    def stream(self, stream_id: str, token: str = TOKEN) -> dict:
        response = self.http.get(f"/v1/streams/{stream_id}", headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        return response.json()


@contextmanager
def serve(app: FastAPI) -> Iterator[LiveService]:
    """Run `app` under uvicorn in a thread on a free port; shut it down cleanly afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "the service to start")
        assert thread.is_alive(), "the service failed to start"
        live = LiveService(f"http://127.0.0.1:{port}")
        yield live
        live.http.close()
    finally:
        server.should_exit = True
        thread.join(TIMEOUT_S)
        sock.close()
    assert not thread.is_alive(), "the service did not shut down"


SERVE_START_TIMEOUT_S = 180.0  # a first start may build the tiny model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def console_script(name: str, module: str) -> list[str]:
    """The installed console script `name`, else its `module` run by this interpreter."""
    script = shutil.which(name)
    return [script] if script else [sys.executable, "-m", module]


def streamguard_command() -> list[str]:
    return console_script("streamguard", "streamguard.cli")


class ServeProcess:
    """`streamguard serve` running as its own process: `service` talks to it, `output()` is what
    it printed, `process` its Popen (for the exit status, or a kill -9)."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, service: LiveService):
        self.process = process
        self.log = log
        self.service = service

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve_process(
    folder: Path, args: list[str], env: dict[str, str], command: list[str] | None = None
) -> Iterator[ServeProcess]:
    """Start `streamguard serve ARGS --port <free>` (`command`: another `streamguard` than this
    environment's) with `env` over this environment, wait until it answers /healthz, and on the
    way out stop it with Ctrl-C (SIGINT), killing it if it hangs."""
    port = free_port()
    log = folder / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*(command or streamguard_command()), "serve", *args, "--port", str(port)],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = ServeProcess(process, log, LiveService(f"http://127.0.0.1:{port}"))
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"serve exited ({process.returncode}):\n{running.output()}"
            try:
                return running.service.http.get("/healthz").json()["status"] == "ok"
            except httpx.TransportError:
                return False

        wait_until(healthy, "streamguard serve to answer /healthz", timeout_s=SERVE_START_TIMEOUT_S)
        yield running
    finally:
        running.service.http.close()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(20)


def receive(ws: ClientConnection, timeout_s: float = TIMEOUT_S) -> dict:
    return json.loads(ws.recv(timeout=timeout_s))


def receive_until(ws: ClientConnection, done: Callable[[dict], bool]) -> list[dict]:
    """Every event up to and including the first for which `done` holds."""
    events = [receive(ws)]
    while not done(events[-1]):
        events.append(receive(ws))
    return events
