"""One stream's long memory: the session's eviction sink, and the recalls of its questions."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamguard.backbones.base import Backbone
from streamguard.config import MemorySettings
from streamguard.engine.session import EvictedChunk, StreamSession
from streamguard.memory.recall import ChunkRecall
from streamguard.memory.records import ChunkPlace, Layers
from streamguard.memory.rotation import rerotated
from streamguard.memory.scorer import QueryScorer
from streamguard.memory.spec import RecallSpec
from streamguard.memory.store import TieredStore

log = logging.getLogger("streamguard.memory")


@dataclass(frozen=True)
class MemoryStats:
    device_bytes: int  # the session's live cache
    host_bytes: int
    disk_bytes: int
    chunks_offloaded: int
    chunks_held: int  # offloaded and still recallable
    chunks_forgotten: int
    recalls: int
    recall_seconds_total: float
    last_recall_s: float | None


class StreamMemory:
    def __init__(
        self,
        backbone: Backbone,
        settings: MemorySettings,
        chunk_seconds: float,
        store: TieredStore,
        scorer: QueryScorer,
    ):
        self.backbone = backbone
        self.settings = settings
        self.chunk_seconds = chunk_seconds
        self.store = store
        self.scorer = scorer
        self.session: StreamSession | None = None
        self.recalls = 0
        self.recall_seconds_total = 0.0
        self.last_recall_s: float | None = None

    def attach(self, session: StreamSession) -> None:
        """Take every chunk the session evicts from now on."""
        self.session = session
        session.eviction_sink = self.offload

    # -- offload (the session's eviction sink, on the worker) -------------------------------

    def offload(self, evicted: EvictedChunk) -> None:
        chunk = evicted.chunk
        place = ChunkPlace(
            index=chunk.index,
            slot=chunk.slot,
            stream_s=chunk.index * self.chunk_seconds,
            seconds=self.chunk_seconds,
            wall_end=chunk.appended_at,
            position_offset=evicted.position_offset,
            tokens=chunk.length,
        )
        # to the stream's first slot: the summary is then the same wherever the chunk sat
        shift = self.backbone.chunk_period() * chunk.slot - evicted.position_offset
        summary = self.scorer.summary(evicted.layers, shift)
        assert self.session is not None
        self.store.add(place, evicted.layers, summary, self.now_s(self.session))

    def now_s(self, session: StreamSession) -> float:
        """Stream seconds at the end of the newest chunk the session holds."""
        newest = session.chunks[-1].index if session.chunks else -1
        return (newest + 1) * self.chunk_seconds

    # -- recall (on the worker, inside `StreamSession.ask`) ----------------------------------

    def recall(self, spec: RecallSpec) -> ChunkRecall:
        """The `Recall` a question passes to `StreamSession.ask`."""
        return ChunkRecall(self, spec)

    def best_matches(self, session: StreamSession, ids: list[int]) -> list[ChunkPlace]:
        """Offloaded chunks by score against the question, best first while they fit
        `memory.recall_tokens`, returned in stream order."""
        places, summaries = self.store.summaries()
        if summaries is None:
            return []
        close = len(session.layout.close)
        words = slice(close, len(ids) - len(session.layout.suffix))
        queries = self.scorer.question_queries(session, ids, words)
        order = self.scorer.scores(queries, summaries).argsort(descending=True).tolist()
        budget = self.settings.recall_tokens
        chosen = []
        for i in order:
            if places[i].tokens <= budget:
                chosen.append(places[i])
                budget -= places[i].tokens
        return sorted(chosen, key=lambda place: place.index)

    def reload(self, place: ChunkPlace, position_offset: int) -> Layers:
        """A chunk's KV rotated from the offset it left at to `position_offset`."""
        return rerotated(self.backbone, self.store.load(place.index), position_offset - place.position_offset)

    def recalled(self, recall: ChunkRecall) -> None:
        self.recalls += 1
        self.recall_seconds_total += recall.seconds
        self.last_recall_s = recall.seconds
        log.info(
            "recall %s: %d chunks, %d tokens in %.3f s",
            recall.mode,
            sum(span.chunks for span in recall.spans),
            recall.tokens,
            recall.seconds,
        )

    def stats(self) -> MemoryStats:
        return MemoryStats(
            device_bytes=0 if self.session is None else self.session.cache_bytes,
            host_bytes=self.store.host_bytes,
            disk_bytes=self.store.disk_bytes,
            chunks_offloaded=self.store.chunks_offloaded,
            chunks_held=self.store.chunks_held,
            chunks_forgotten=self.store.chunks_forgotten,
            recalls=self.recalls,
            recall_seconds_total=self.recall_seconds_total,
            last_recall_s=self.last_recall_s,
        )

    def close(self) -> None:
        if self.session is not None:
            self.session.eviction_sink = None
        self.store.close()
