"""State shared beyond one stream and one worker: `open_store(settings.cluster)` gives the
in-memory store, or Redis (with an in-memory fallback) when `cluster.redis_url` is set."""

from __future__ import annotations

from streamguard.cluster.heartbeat import Heartbeat
from streamguard.cluster.store import (
    AnswerRecord,
    MemoryStore,
    Store,
    StoreHealth,
    StoreUnavailableError,
    check_store,
    open_store,
    worker_name,
)
from streamguard.vocabulary import StreamRecord

__all__ = [
    "AnswerRecord",
    "Heartbeat",
    "MemoryStore",
    "Store",
    "StoreHealth",
    "StoreUnavailableError",
    "StreamRecord",
    "check_store",
    "open_store",
    "worker_name",
]
