"""One question's recall: which offloaded chunks, loaded back beside the window for its answer.

The recalled chunks go after the window in the cache, in stream order. Their keys carry their
own positions (re-rotated to the session's current offset), and attention does not care where
in the cache a key sits, only where its rotation puts it: this is the sequence
[prefix][recalled chunks][window][question]. `StreamSession.ask` cuts the cache back to where
it was before the question, which takes the recalled chunks out with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import torch

from streamguard.engine import kv
from streamguard.engine.session import StreamSession
from streamguard.memory.records import ChunkPlace
from streamguard.memory.spec import (
    InvalidRecallError,
    RecalledSpan,
    RecallSpec,
    RecallTooLargeError,
    SpanRecall,
)

if TYPE_CHECKING:
    from streamguard.memory.stream import StreamMemory


@dataclass
class ChunkRecall:
    """A `Recall` for `StreamSession.ask`: choose, load, re-rotate, append."""

    memory: StreamMemory
    spec: RecallSpec
    spans: list[RecalledSpan] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0  # choosing and loading, the question's extra latency
    loaded: bool = False  # the answer got as far as loading it

    @property
    def mode(self) -> str:
        return "span" if isinstance(self.spec, SpanRecall) else self.spec

    def load(self, session: StreamSession, question_ids: list[int]) -> int:
        started = time.perf_counter()
        places = self._choose(session, question_ids)
        if places:
            per_chunk = [self.memory.reload(place, session.position_offset) for place in places]
            kv.append_span(
                session.cache,
                [
                    (
                        torch.cat([c[i][0] for c in per_chunk], dim=-2),
                        torch.cat([c[i][1] for c in per_chunk], dim=-2),
                    )
                    for i in range(len(per_chunk[0]))
                ],
            )
        self.tokens = sum(place.tokens for place in places)
        self.spans = merge_spans(places)
        self.seconds = time.perf_counter() - started
        self.loaded = True
        if self.spec != "recent":
            self.memory.recalled(self)
        return self.tokens

    def _choose(self, session: StreamSession, ids: list[int]) -> list[ChunkPlace]:
        if self.spec == "recent":
            return []
        if self.spec == "auto":
            return self.memory.best_matches(session, ids)
        return self._span(self.spec, session)

    def _span(self, span: SpanRecall, session: StreamSession) -> list[ChunkPlace]:
        places = self.memory.store.places()
        if span.wall_clock:
            start, end = span.start.timestamp(), span.end.timestamp()  # type: ignore[union-attr]
            chosen = [p for p in places if p.wall_end > start and p.wall_start < end]
        else:
            now = self.memory.now_s(session)
            start = now + span.start if span.start < 0 else span.start  # type: ignore[operator]
            end = now if span.end is None else (now + span.end if span.end < 0 else span.end)  # type: ignore[operator]
            if end <= start:
                raise InvalidRecallError(
                    f"the recall span is empty at stream second {now:.1f}: from {start:.1f} s to {end:.1f} s"
                )
            chosen = [p for p in places if p.stream_end_s > start and p.stream_s < end]
        tokens = sum(p.tokens for p in chosen)
        limit = self.memory.settings.span_tokens
        if tokens > limit:
            raise RecallTooLargeError(
                f"the span holds {tokens} offloaded tokens ({len(chosen)} chunks); memory.span_tokens "
                f"allows {limit}: ask about a shorter span"
            )
        return chosen


def merge_spans(places: list[ChunkPlace]) -> list[RecalledSpan]:
    """Consecutive chunks (in stream order) as one span each."""
    spans: list[list[ChunkPlace]] = []
    for place in places:
        if spans and place.index == spans[-1][-1].index + 1:
            spans[-1].append(place)
        else:
            spans.append([place])
    return [
        RecalledSpan(
            from_s=run[0].stream_s,
            to_s=run[-1].stream_end_s,
            from_wall=datetime.fromtimestamp(run[0].wall_start, UTC),
            to_wall=datetime.fromtimestamp(run[-1].wall_end, UTC),
            chunks=len(run),
            tokens=sum(p.tokens for p in run),
        )
        for run in spans
    ]
