"""The service-wide disk cap: every stream's chunk files together stay under it, the oldest file
of any stream going first. Its lock is the one lock of all the worker's stores (a cap spans
streams, so dropping another stream's file must not race that stream's own changes)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamguard.memory.store import TieredStore


class DiskQuota:
    def __init__(self, cap_bytes: int):
        self.cap_bytes = cap_bytes
        self.lock = threading.RLock()
        self._stores: set[TieredStore] = set()

    def register(self, store: TieredStore) -> None:
        with self.lock:
            self._stores.add(store)

    def unregister(self, store: TieredStore) -> None:
        with self.lock:
            self._stores.discard(store)

    @property
    def used_bytes(self) -> int:
        with self.lock:
            return sum(store.disk_bytes for store in self._stores)

    def enforce(self) -> None:
        """Delete the oldest files of any stream until the total fits the cap."""
        with self.lock:
            while self.used_bytes > self.cap_bytes:
                holders = [
                    (s.oldest_disk_wall(), id(s), s) for s in self._stores if s.oldest_disk_wall() is not None
                ]
                _, _, oldest = min(holders)
                oldest.forget_oldest_on_disk()
