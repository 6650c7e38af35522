"""A real, private redis-server for tests: its own free port on 127.0.0.1, no persistence, its
own folder. It never touches another Redis (such as one on 6379) and can be killed and started
again on the same port to play an outage."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from service_helpers import free_port, wait_until

REDIS_BINARY = "redis-server"


class RedisServer:
    def __init__(self, binary: str, folder: Path, port: int):
        self.binary = binary
        self.folder = folder
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, f"redis-server on port {self.port} to answer", timeout_s=20)

    def kill(self) -> None:
        """Gone at once, as in a crash (nothing saved: it comes back empty)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=20)
            self.process = None

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            f"redis-server exited; see {self.folder / 'redis.log'}"
        )
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started redis-server (skips the test when the binary is missing); killed afterwards."""
    binary = shutil.which(REDIS_BINARY)
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(binary, folder, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
