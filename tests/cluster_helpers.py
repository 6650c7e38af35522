"""Three `streamguard serve` workers, A, B and C (tiny config), on one real redis-server, shared
by the cluster tests of a session: started once (`trio`, session-scoped: a start loads the model,
seconds on 2 cores), and before each test every worker an earlier test stopped (SIGKILL, a drain)
is started again and every stream left behind deleted (`cluster`); both fixtures are in conftest.

A is the small one: it holds one stream (`service.max_streams` 1), so one camera fills it and
placement sends the next stream to B or C. Every worker knows the test token and an admin one
(`ADMIN`), answers up to 256 tokens, and renews its leases every third of `LEASE_TTL_S`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from redis_helpers import RedisServer, redis_server
from service_helpers import CLEANUP_TOKEN, TOKEN, LiveService, ServeProcess, serve_process, wait_until

LEASE_TTL_S = 1.5
ADMIN = {"token": "admin-token", "name": "ops", "role": "admin"}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN['token']}"}
NAMES = ("a", "b", "c")
A_MAX_STREAMS = 1


class Trio:
    """The three workers: `trio.a.service` (a `LiveService`), `trio.a.process`, ... by name."""

    def __init__(self, folder: Path, redis: RedisServer):
        self.folder = folder
        self.env = {
            "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN, ADMIN, CLEANUP_TOKEN]),
            "STREAMGUARD_SESSION__MAX_NEW_TOKENS": "256",
            "STREAMGUARD_CLUSTER__REDIS_URL": redis.url,
            "STREAMGUARD_CLUSTER__LEASE_TTL_S": str(LEASE_TTL_S),
            "STREAMGUARD_CLUSTER__DRAIN_TIMEOUT_S": "20",
        }
        self.redis = redis
        self._workers: dict[str, ServeProcess] = {}
        self._stops: dict[str, ExitStack] = {}

    @property
    def a(self) -> ServeProcess:
        return self._workers["a"]

    @property
    def b(self) -> ServeProcess:
        return self._workers["b"]

    @property
    def c(self) -> ServeProcess:
        return self._workers["c"]

    def start(self, name: str) -> ServeProcess:
        """Worker `name` (started again, on a new port, when it stopped)."""
        self.stop(name)
        env = (
            {**self.env, "STREAMGUARD_SERVICE__MAX_STREAMS": str(A_MAX_STREAMS)} if name == "a" else self.env
        )
        stack = ExitStack()
        self._workers[name] = stack.enter_context(serve_process(self.folder, ["--config", "tiny"], env))
        self._stops[name] = stack
        return self._workers[name]

    def stop(self, name: str) -> None:
        """Stop worker `name` (Ctrl-C) if it still runs."""
        stack = self._stops.pop(name, None)
        if stack is not None:
            stack.close()

    def ready(self) -> None:
        """All three running, empty, and each advertising itself to the others in Redis."""
        stopped = [n for n in NAMES if n not in self._workers or self._workers[n].process.poll() is not None]
        # started side by side: each waits on its model load and /healthz, not on the others
        with ThreadPoolExecutor(max_workers=len(NAMES)) as starting:
            list(starting.map(self.start, stopped))
        services = self.services()
        for service in services:
            service.delete_every_stream()
        # each worker has read the others' cards (every third of a lease): placement and the
        # pages' content policy know them
        urls = {service.url for service in services}

        def everyone_seen() -> bool:
            policies = [service.http.get("/").headers["content-security-policy"] for service in services]
            return all(url in policy for policy in policies for url in urls)

        wait_until(everyone_seen, "the workers to see each other")

    def services(self) -> list[LiveService]:
        """A's, B's and C's services, in that order."""
        return [self._workers[name].service for name in NAMES]

    def worker_of(self, service: LiveService) -> ServeProcess:
        """The worker whose service `service` is."""
        return next(worker for worker in self._workers.values() if worker.service is service)

    def holding(self, *services: LiveService) -> list[LiveService]:
        """Those of `services` that hold a stream themselves (`/v1/stats`; `/v1/streams` lists
        the cluster's)."""
        return [service for service in services if service.http.get("/v1/stats").json()["streams"]]


@contextmanager
def running_trio(folder: Path) -> Iterator[Trio]:
    with redis_server(folder) as redis:
        trio = Trio(folder, redis)
        try:
            trio.ready()
            yield trio
        finally:
            for name in NAMES:
                trio.stop(name)
