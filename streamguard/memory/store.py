"""One stream's offloaded chunks, oldest first: the newest in host memory, older ones in files,
each with its key summary (for "auto" recall) kept in host memory whatever its tier.

Limits (`memory:` settings), checked after every offload, oldest first:
`retention_s` (stream seconds behind the newest chunk held) forgets chunks; `host_bytes` spills
the oldest host chunks to disk; `disk_bytes` and the quota's service-wide cap delete the oldest
files. A chunk that could never fit on disk is forgotten instead of written.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from streamguard.config import MemorySettings
from streamguard.memory.disk import read_chunk, write_chunk
from streamguard.memory.quota import DiskQuota
from streamguard.memory.records import ChunkPlace, Layers, layers_nbytes


@dataclass
class _Entry:
    place: ChunkPlace
    summary: torch.Tensor  # (score layers, kv heads, head dim) float32
    host: Layers | None  # None once on disk
    path: Path | None
    nbytes: int  # tensor bytes in host memory, or the file's size


class TieredStore:
    def __init__(self, folder: Path, settings: MemorySettings, quota: DiskQuota):
        self.folder = folder
        self.settings = settings
        self.quota = quota
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self.host_bytes = 0
        self.disk_bytes = 0
        self.chunks_offloaded = 0  # chunks received from the device cache, ever
        self.chunks_forgotten = 0  # by retention or a disk limit
        self.closed = False  # the stream is gone: a chunk still on its way out is not kept
        folder.mkdir(parents=True, exist_ok=True)
        quota.register(self)

    # -- offload ---------------------------------------------------------------------------

    def add(self, place: ChunkPlace, layers: Layers, summary: torch.Tensor, now_s: float) -> None:
        """Keep an evicted chunk in host memory, then apply every limit (`now_s`: the stream
        seconds of the newest chunk the session holds)."""
        with self.quota.lock:
            if self.closed:
                return
            nbytes = layers_nbytes(layers)
            self._entries[place.index] = _Entry(place, summary, layers, None, nbytes)
            self.host_bytes += nbytes
            self.chunks_offloaded += 1
            self._forget_expired(now_s)
            self._spill_to_disk()
            while self.disk_bytes > self.settings.disk_bytes:
                self.forget_oldest_on_disk()
            self.quota.enforce()

    def _forget_expired(self, now_s: float) -> None:
        horizon = now_s - self.settings.retention_s
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.place.stream_end_s > horizon:
                return
            self._forget(oldest)

    def _spill_to_disk(self) -> None:
        limit = min(self.settings.disk_bytes, self.quota.cap_bytes)
        for entry in list(self._entries.values()):
            if self.host_bytes <= self.settings.host_bytes:
                return
            if entry.host is None:
                continue
            if entry.nbytes > limit:  # could never stay on disk: do not write it at all
                self._forget(entry)
                continue
            path = self.folder / f"{entry.place.index:09d}.safetensors"
            size = write_chunk(path, entry.host)
            self.host_bytes -= entry.nbytes
            entry.host, entry.path, entry.nbytes = None, path, size
            self.disk_bytes += size

    # -- forgetting ------------------------------------------------------------------------

    def oldest_disk_wall(self) -> float | None:
        entry = self._oldest_on_disk()
        return None if entry is None else entry.place.wall_end

    def forget_oldest_on_disk(self) -> None:
        with self.quota.lock:
            entry = self._oldest_on_disk()
            if entry is not None:
                self._forget(entry)

    def _oldest_on_disk(self) -> _Entry | None:
        return next((entry for entry in self._entries.values() if entry.path is not None), None)

    def _forget(self, entry: _Entry) -> None:
        del self._entries[entry.place.index]
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)
            self.disk_bytes -= entry.nbytes
        else:
            self.host_bytes -= entry.nbytes
        self.chunks_forgotten += 1

    def close(self) -> None:
        """Forget everything and delete the stream's folder."""
        self.quota.unregister(self)
        with self.quota.lock:
            self.closed = True
            self._entries.clear()
            self.host_bytes = self.disk_bytes = 0
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------

    def places(self) -> list[ChunkPlace]:
        with self.quota.lock:
            return [entry.place for entry in self._entries.values()]

    def summaries(self) -> tuple[list[ChunkPlace], torch.Tensor | None]:
        """Every held chunk's place and its key summary stacked, (chunks, layers, heads, dim)."""
        with self.quota.lock:
            entries = list(self._entries.values())
        if not entries:
            return [], None
        return [e.place for e in entries], torch.stack([e.summary for e in entries])

    def load(self, index: int) -> Layers:
        """A held chunk's KV, from host memory or its file."""
        with self.quota.lock:
            entry = self._entries[index]
            return entry.host if entry.host is not None else read_chunk(entry.path)

    def tier_of(self, index: int) -> str:
        with self.quota.lock:
            return "host" if self._entries[index].host is not None else "disk"

    @property
    def chunks_held(self) -> int:
        return len(self._entries)
