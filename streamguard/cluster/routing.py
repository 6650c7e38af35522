"""Any worker answers for any stream: what needs the stream's cache goes to the worker holding
it (the record's `worker`), over Redis.

Two kinds of traffic, both on Redis Streams:

- a **call** (`Router.call`: a stream's info, a worker's list, a delete) is one entry in the
  owner's inbox naming a reply stream the caller waits on;
- a **forwarded websocket** (`Router.relay`) is a session with two streams: the client's
  messages go up, the owner's events (answer deltas, stats, errors, the close) come down. The
  owner runs the ordinary `Connection` over a `RemoteSocket`, so questions, cancels, stats and
  updates behave exactly as on a local socket.

Why Redis Streams and not pub/sub: a stream keeps its entries until read, in the order written,
so a reply or the first delta written before the other side listens is not lost (pub/sub
drops what is published before the subscription, and disconnects a slow subscriber), and one
stream per session carries one connection's events in order. `XREAD BLOCK` with a timeout
wakes the waiting side every third of a lease: each side then checks the other is alive (the
worker key every router refreshes, `worker:{name}`, expiring after one lease TTL), so a dead
owner turns into a `stream_lost` error, never a hang.

Keys, under `cluster.key_prefix`:

    worker:{name}        string  the worker is alive (expires after `lease_ttl_s`)
    workers              set     every worker name seen (the listing prunes the dead)
    inbox:{name}         stream  calls and new sessions for the worker
    reply:{id}           stream  one call's reply
    socket:{id}:up       stream  a forwarded socket's client messages, and keep-alives
    socket:{id}:down     stream  the owner's events for it, then a close
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from streamguard.config import ClusterSettings

log = logging.getLogger("streamguard.cluster")

SESSION_KEY_TTL_MS = 3_600_000  # a session's streams outlive neither side by more than this
INBOX_MAX = 10_000  # entries kept in a worker's inbox
WS_CLOSE_STREAM_LOST = 4503  # 4000 + 503: the worker holding the stream went away


class WorkerUnavailableError(ConnectionError):
    """The worker holding a stream did not answer within a lease TTL."""


class CallFailedError(Exception):
    """The owner answered a call with an error: its code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class ClientSocket(Protocol):
    """The websocket a relay serves (Starlette's `WebSocket`)."""

    async def receive(self) -> dict[str, Any]: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


# What the owner does for a call: (op, args) → JSON reply; raise CallFailedError to refuse.
CallHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
# What the owner does for a forwarded socket: serve it as a client of `stream_id`.
SocketHandler = Callable[[str, "RemoteSocket"], Awaitable[None]]


class RemoteSocket:
    """The owner's end of a forwarded websocket, shaped like Starlette's `WebSocket` for
    `Connection`: `receive()` reads the client's messages, `send_text`/`close` write events."""

    def __init__(self, router: Router, session: str):
        self._router = router
        self._up = router.key("socket", f"{session}:up")
        self._down = router.key("socket", f"{session}:down")
        self._last = "0"
        self._closed = False

    async def receive(self) -> dict[str, Any]:
        """The client's next message; a disconnect when it left, closed, or the relaying
        worker went silent for three lease TTLs (its keep-alives stopped)."""
        silent_since = time.monotonic()
        while not self._closed:
            entries = await self._router.read(self._up, self._last)
            if not entries:
                if time.monotonic() - silent_since > 3 * self._router.lease_ttl_s:
                    break
                continue
            silent_since = time.monotonic()
            for entry_id, fields in entries:
                self._last = entry_id
                if fields["kind"] == "text":
                    return {"type": "websocket.receive", "text": fields["data"]}
                if fields["kind"] == "bytes":
                    return {"type": "websocket.receive", "bytes": bytes.fromhex(fields["data"])}
                if fields["kind"] == "disconnect":
                    self._closed = True
        return {"type": "websocket.disconnect", "code": 1001}

    async def send_text(self, data: str) -> None:
        await self._router.append(self._down, {"kind": "text", "data": data})

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self._closed = True
        await self._router.append(self._down, {"kind": "close", "code": str(code), "reason": reason or ""})


class Router:
    """This worker's end of the routing: serves its inbox (calls and sessions, through plain
    callbacks, as `Heartbeat` gets them), and calls and relays to other workers."""

    def __init__(
        self,
        settings: ClusterSettings,
        worker: str,
        on_call: CallHandler,
        on_socket: SocketHandler,
        room: Callable[[], int],
    ):
        """`room()`: how many more streams this worker takes now (advertised with
        `settings.public_url`, so full workers send new streams here)."""
        assert settings.redis_url, "routing needs the shared Redis"
        # A client of its own: its reads block for a third of a lease, longer than the store's
        # `timeout_s` allows a call.
        self.client = Redis.from_url(settings.redis_url, decode_responses=True)
        self.worker = worker
        self.lease_ttl_s = settings.lease_ttl_s
        self._prefix = settings.key_prefix
        self._poll_ms = max(1, round(settings.lease_ttl_s * 1000 / 3))
        self._on_call = on_call
        self._on_socket = on_socket
        self._room = room
        self._public_url = settings.public_url
        # The other live workers' public URLs as of the last round (pages may call them: CORS
        # and the content policy read it on every request, so it is kept, not looked up).
        self.peer_urls: frozenset[str] = frozenset()
        self._tasks: set[asyncio.Task[None]] = set()
        self._chores: list[asyncio.Task[None]] = []

    def key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"

    # -- the worker's own end ----------------------------------------------------------------

    def start(self) -> None:
        self._chores = [
            asyncio.create_task(self._stay_alive(), name="router-alive"),
            asyncio.create_task(self._serve_inbox(), name="router-inbox"),
        ]

    async def stop(self) -> None:
        for task in [*self._chores, *self._tasks]:
            task.cancel()
        for task in [*self._chores, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(self.key("worker", self.worker))
            await self.client.srem(self.key("workers"), self.worker)
        await self.client.aclose()

    async def _stay_alive(self) -> None:
        while True:
            try:
                await self.advertise()
                self.peer_urls = frozenset(
                    card["url"] for card in (await self._cards()).values() if card["url"]
                )
            except (RedisError, OSError) as exc:  # the store's fallback reports the outage
                log.debug("router.alive_failed error=%s", exc)
            await asyncio.sleep(self.lease_ttl_s / 3)

    async def advertise(self) -> None:
        """This worker's card now (it is alive, where it is, its room), as each round writes it;
        a drain calls it at once, so no worker places a new stream here in the meantime."""
        pipe = self.client.pipeline(transaction=False)
        card = json.dumps({"url": self._public_url, "room": self._room()})
        pipe.set(self.key("worker", self.worker), card, px=round(self.lease_ttl_s * 1000))
        pipe.sadd(self.key("workers"), self.worker)
        await pipe.execute()

    async def _serve_inbox(self) -> None:
        inbox, last = self.key("inbox", self.worker), "0"
        with contextlib.suppress(RedisError, OSError):  # a former process of this name is gone
            await self.client.delete(inbox)
        while True:
            try:
                entries = await self.read(inbox, last)
            except (RedisError, OSError) as exc:
                log.debug("router.inbox_failed error=%s", exc)
                await asyncio.sleep(self.lease_ttl_s / 3)
                continue
            for entry_id, fields in entries:
                last = entry_id
                self._spawn(self._serve_entry(fields))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_entry(self, fields: dict[str, str]) -> None:
        if fields["op"] == "socket":
            try:
                await self._on_socket(fields["stream"], RemoteSocket(self, fields["session"]))
            except Exception:
                log.exception("router.socket_failed stream=%s", fields["stream"])
            return
        try:
            reply: dict[str, Any] = {"ok": await self._on_call(fields["op"], json.loads(fields["args"]))}
        except CallFailedError as exc:
            reply = {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}
        except Exception as exc:
            log.exception("router.call_failed op=%s", fields["op"])
            reply = {"error": {"code": "internal_error", "message": str(exc), "status": 500}}
        await self.append(fields["reply"], {"reply": json.dumps(reply)})

    # -- reaching other workers --------------------------------------------------------------

    async def alive(self, worker: str) -> bool:
        return bool(await self.client.exists(self.key("worker", worker)))

    async def workers(self) -> list[str]:
        """The other workers alive now."""
        return list(await self._cards())

    async def _cards(self) -> dict[str, dict[str, Any]]:
        """What each other live worker advertises: its public URL and its room."""
        names = sorted(await self.client.smembers(self.key("workers")) - {self.worker})
        if not names:
            return {}
        cards = await self.client.mget([self.key("worker", name) for name in names])
        gone = [name for name, card in zip(names, cards, strict=True) if card is None]
        if gone:
            await self.client.srem(self.key("workers"), *gone)
        return {name: json.loads(card) for name, card in zip(names, cards, strict=True) if card is not None}

    async def place(self) -> str | None:
        """The public URL of the other live worker with the most room, None when none has any
        (or says where it is)."""
        cards = [card for card in (await self._cards()).values() if card["url"] and card["room"] > 0]
        return max(cards, key=lambda card: card["room"])["url"] if cards else None

    async def call(self, worker: str, op: str, args: dict[str, Any], timeout_s: float | None = None) -> Any:
        """`op` run by `worker`'s call handler, its reply; `CallFailedError` when it refused,
        `WorkerUnavailableError` when it did not answer within `timeout_s` (a lease TTL)."""
        timeout_s = timeout_s or self.lease_ttl_s
        reply_key = self.key("reply", uuid.uuid4().hex)
        message = {"op": op, "args": json.dumps(args), "reply": reply_key}
        try:
            await self.append(self.key("inbox", worker), message, maxlen=INBOX_MAX)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                entries = await self.read(reply_key, "0")
                if entries:
                    reply = json.loads(entries[0][1]["reply"])
                    break
            else:
                raise WorkerUnavailableError(f"worker {worker} did not answer within {timeout_s:g} s")
        except (RedisError, OSError) as exc:
            raise WorkerUnavailableError(f"cannot reach worker {worker} through Redis: {exc}") from None
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self.client.delete(reply_key)
        if "error" in reply:
            raise CallFailedError(**reply["error"])
        return reply["ok"]

    async def relay(self, websocket: ClientSocket, worker: str, stream_id: str) -> None:
        """Serve an accepted client websocket of `stream_id` from `worker`: its messages go to
        the owner, the owner's events come back in order. Should the owner die, the client gets
        an `error` event (`stream_lost`) within about one lease TTL and the socket closes (4503)."""
        session = uuid.uuid4().hex
        up, down = self.key("socket", f"{session}:up"), self.key("socket", f"{session}:down")
        opening = {"op": "socket", "stream": stream_id, "session": session}
        await self.append(self.key("inbox", worker), opening, maxlen=INBOX_MAX)
        forward = asyncio.create_task(self._forward_client(websocket, up))
        try:
            await self._relay_owner(websocket, down, worker, stream_id)
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward
            with contextlib.suppress(RedisError, OSError):
                await self.append(up, {"kind": "disconnect"})
                await self.client.delete(down)
                await self.client.pexpire(up, round(10 * self.lease_ttl_s * 1000))

    async def _forward_client(self, websocket: ClientSocket, up: str) -> None:
        """The client's messages up, and a keep-alive every third of a lease while it is quiet."""
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), self.lease_ttl_s / 3)
            except TimeoutError:
                await self.append(up, {"kind": "ping"})
                continue
            except Exception:  # closed under us
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.disconnect":
                await self.append(up, {"kind": "disconnect"})
                return
            if message.get("text") is not None:
                await self.append(up, {"kind": "text", "data": message["text"]})
            elif message.get("bytes") is not None:
                await self.append(up, {"kind": "bytes", "data": message["bytes"].hex()})

    async def _relay_owner(self, websocket: ClientSocket, down: str, worker: str, stream_id: str) -> None:
        last = "0"
        while True:
            entries = await self.read(down, last)
            if not entries and not await self.alive(worker):
                lost = {
                    "type": "error",
                    "code": "stream_lost",
                    "message": f"worker {worker}, which held stream {stream_id}, stopped answering",
                }
                with contextlib.suppress(Exception):
                    await websocket.send_text(json.dumps(lost))
                    await websocket.close(code=WS_CLOSE_STREAM_LOST, reason="stream_lost")
                return
            for entry_id, fields in entries:
                last = entry_id
                if fields["kind"] == "close":
                    with contextlib.suppress(Exception):
                        await websocket.close(code=int(fields["code"]), reason=fields["reason"] or None)
                    return
                try:
                    await websocket.send_text(fields["data"])
                except Exception:  # the client left; the forwarder tells the owner
                    return

    # -- Redis Streams -----------------------------------------------------------------------

    async def append(self, key: str, fields: dict[str, str], maxlen: int | None = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=maxlen, approximate=True)
        pipe.pexpire(key, SESSION_KEY_TTL_MS)
        await pipe.execute()

    async def read(self, key: str, after: str) -> list[tuple[str, dict[str, str]]]:
        """Entries of `key` after id `after`, waiting up to a third of a lease for one."""
        reply = await self.client.xread({key: after}, block=self._poll_ms)
        return reply[0][1] if reply else []
