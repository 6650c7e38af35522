"""State shared beyond one stream: `open_store(settings.cluster)` (in memory for one worker)."""

from __future__ import annotations

from streamguard.cluster.store import AnswerRecord, MemoryStore, Store, StreamRecord, open_store, worker_name

__all__ = ["AnswerRecord", "MemoryStore", "Store", "StreamRecord", "open_store", "worker_name"]
