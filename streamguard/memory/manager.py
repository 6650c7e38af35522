"""A worker's long memory: one folder of its own under `memory.root`, one `StreamMemory` per
stream, the service-wide disk cap.

Folders are named `worker-<host>-<pid>-<random>`, and their worker holds an exclusive `flock` on
the folder's `.owner` file while it lives (the kernel lets go when the process dies, however it
dies). A worker starting up deletes every folder of this host whose lock it can take: a crashed
or restarted worker's files belong to no stream any more. Other hosts' folders are left alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from streamguard.backbones.base import Backbone
from streamguard.backbones.tiny import default_cache_dir
from streamguard.config import MemorySettings
from streamguard.engine.session import StreamSession
from streamguard.memory.quota import DiskQuota
from streamguard.memory.scorer import QueryScorer
from streamguard.memory.store import TieredStore
from streamguard.memory.stream import MemoryStats, StreamMemory

log = logging.getLogger("streamguard.memory")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
OWNER_FILE = ".owner"


class MemoryManager:
    def __init__(self, backbone: Backbone, settings: MemorySettings, chunk_seconds: float):
        self.backbone = backbone
        self.settings = settings
        self.chunk_seconds = chunk_seconds
        self.root = Path(settings.root) if settings.root else default_cache_dir() / "memory"
        self.quota = DiskQuota(settings.service_disk_bytes)
        self.scorer = QueryScorer(backbone, settings.score_layers)
        self._streams: dict[str, StreamMemory] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.root)
        self.folder = self.root / f"{_host_prefix()}{os.getpid()}-{secrets.token_hex(4)}"
        self.folder.mkdir()
        self._owner = open(self.folder / OWNER_FILE, "w")  # noqa: SIM115 (held for the worker's life)
        fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def open(self, stream_id: str, session: StreamSession) -> StreamMemory:
        """Give `session`'s evicted chunks a memory (replacing none: one per stream id)."""
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id} already has a memory")
        store = TieredStore(self.folder / _folder_name(stream_id), self.settings, self.quota)
        memory = StreamMemory(self.backbone, self.settings, self.chunk_seconds, store, self.scorer)
        memory.attach(session)
        self._streams[stream_id] = memory
        return memory

    def close(self, stream_id: str) -> None:
        """Forget the stream's chunks and delete its files."""
        memory = self._streams.pop(stream_id, None)
        if memory is not None:
            memory.close()

    def close_all(self) -> None:
        for stream_id in list(self._streams):
            self.close(stream_id)
        shutil.rmtree(self.folder, ignore_errors=True)
        self._owner.close()

    def stats(self) -> list[MemoryStats]:
        return [memory.stats() for memory in list(self._streams.values())]


def _host_prefix() -> str:
    return f"worker-{re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname())}-"


def _folder_name(stream_id: str) -> str:
    if _SAFE_NAME.match(stream_id):
        return stream_id
    return "id-" + hashlib.sha256(stream_id.encode()).hexdigest()[:32]


def remove_orphans(root: Path) -> list[Path]:
    """Delete this host's worker folders no live worker holds; return them."""
    removed = []
    for folder in root.iterdir():
        if not (folder.is_dir() and folder.name.startswith(_host_prefix())):
            continue
        try:
            with open(folder / OWNER_FILE, "a") as owner:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its worker lives
        except FileNotFoundError:
            pass  # a folder whose worker died before it wrote its lock file
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        log.info("removed %s: no worker owns it", folder)
    return removed
