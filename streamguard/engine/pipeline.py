"""One chunk through the model path: preprocess → encoders → selection → session append.

Blocking and GPU-bound: callers on an event loop run it in the model's worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import torch

from streamguard.backbones.base import Backbone, EncodedChunk
from streamguard.config import ReferenceMode, Settings
from streamguard.engine.session import CachedChunk, StreamSession
from streamguard.pruning.pruner import PruneDecision, Pruner

if TYPE_CHECKING:
    from streamguard.ingest.chunker import AVChunk

T = TypeVar("T")

STAGES = ("preprocess", "vision_encode", "audio_encode", "select", "prefill")


@dataclass
class ChunkReport:
    """What became of one chunk, for stats tables, metrics and the browser's overlay."""

    index: int
    start: float
    video_tokens_in: int
    video_tokens_kept: int
    audio_tokens: int
    video_dropped: bool  # this chunk's video was redundant and never entered the cache
    previous_video_evicted: bool  # the previous chunk's video was evicted for this one
    audio_missing: bool
    similarity: float | None
    reference_mode: ReferenceMode
    grid: tuple[int, int, int] | None  # (F, H, W) token grid of the chunk's video
    resized_hw: tuple[int, int] | None
    semantic: list[int] = field(default_factory=list)  # kept flat indices by branch (frame 0..F-1)
    spatial: list[int] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_in(self) -> int:
        return self.video_tokens_in + self.audio_tokens

    @property
    def tokens_kept(self) -> int:
        return self.video_tokens_kept + self.audio_tokens


@dataclass
class EncodedAVChunk:
    """A chunk through preprocessing and the encoders, before selection."""

    chunk: AVChunk
    encoded: EncodedChunk
    resized_hw: tuple[int, int] | None
    timings_ms: dict[str, float]  # preprocess, vision_encode, audio_encode


def encode_chunk(backbone: Backbone, chunk: AVChunk) -> EncodedAVChunk:
    """Preprocess a chunk and run both encoders, timing each stage."""
    timings: dict[str, float] = {}
    inputs = _timed(backbone, timings, "preprocess", lambda: backbone.preprocess(chunk.frames, chunk.audio))
    video, deepstack = _timed(backbone, timings, "vision_encode", lambda: backbone.encode_vision(inputs))
    audio = _timed(backbone, timings, "audio_encode", lambda: backbone.encode_audio(inputs))
    encoded = EncodedChunk(video=video, audio=audio, deepstack=deepstack)
    return EncodedAVChunk(chunk, encoded, inputs.resized_hw, timings)


def _timed(backbone: Backbone, timings: dict[str, float], stage: str, work: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = work()
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)
    timings[stage] = (time.perf_counter() - started) * 1000
    return result


class ChunkPipeline:
    """Drives one stream's session with its pruner, chunk after chunk."""

    def __init__(self, backbone: Backbone, session: StreamSession, pruner: Pruner):
        self.backbone = backbone
        self.session = session
        self.pruner = pruner
        # The newest appended chunk and its features: the `previous` drop policy may evict its video.
        self._last: tuple[CachedChunk, EncodedChunk] | None = None

    def process(self, chunk: AVChunk) -> ChunkReport:
        return self.process_encoded(encode_chunk(self.backbone, chunk))

    def process_encoded(self, prepared: EncodedAVChunk) -> ChunkReport:
        """Select, then append, a chunk already through the encoders (one encoding can feed the
        pipelines of several methods: `eval` replays every method off the same features)."""
        chunk, encoded = prepared.chunk, prepared.encoded
        timings = dict(prepared.timings_ms)
        self._forget_reference_leaving_the_cache(encoded)
        decision = self.pruner.plan(encoded, chunk.index)
        timings["select"] = decision.select_ms
        evicted = self._evict_previous(decision)
        cached = _timed(
            self.backbone,
            timings,
            "prefill",
            lambda: self.session.append_chunk(
                encoded, keep=decision.keep, drop_video=decision.drop_video, index=chunk.index
            ),
        )
        self._last = (cached, encoded)
        return self._report(chunk, encoded, cached, decision, evicted, prepared.resized_hw, timings)

    def _forget_reference_leaving_the_cache(self, encoded: EncodedChunk) -> None:
        # The drop rule compares with the last chunk whose video it kept. Once the token budget
        # evicts that chunk the cache holds nothing of its scene, so a static stream would be left
        # with audio only. The rule starts afresh when this append, at its largest (all its video),
        # would push the reference out: this chunk then keeps its video and becomes the reference.
        reference = self.pruner.drop_rule.reference_chunk
        if reference is None:
            return
        largest = encoded.num_video_tokens + int(encoded.audio.shape[0])
        survivors = self.session.chunks[self.session.evictions_for(largest) :]
        if not survivors or reference < survivors[0].index:  # chunks leave oldest first
            self.pruner.drop_rule.reset()

    def _evict_previous(self, decision: PruneDecision) -> bool:
        if not decision.evict_previous or self._last is None:
            return False
        cached, encoded = self._last
        if not self.session.chunks or self.session.chunks[-1] is not cached or cached.video_tokens == 0:
            return False
        self.session.evict_video(cached, encoded)
        return True

    @staticmethod
    def _report(
        chunk: AVChunk,
        encoded: EncodedChunk,
        cached: CachedChunk,
        decision: PruneDecision,
        evicted: bool,
        resized_hw: tuple[int, int] | None,
        timings: dict[str, float],
    ) -> ChunkReport:
        selection = decision.selection
        return ChunkReport(
            index=chunk.index,
            start=chunk.start,
            video_tokens_in=encoded.num_video_tokens,
            video_tokens_kept=cached.video_tokens,
            audio_tokens=cached.audio_tokens,
            video_dropped=decision.drop_video,
            previous_video_evicted=evicted,
            audio_missing=chunk.audio_missing,
            similarity=decision.similarity,
            reference_mode=decision.reference_mode,
            grid=None if encoded.video is None else tuple(encoded.video.shape[:3]),
            resized_hw=resized_hw,
            semantic=[] if selection is None else selection.semantic.nonzero().flatten().tolist(),
            spatial=[] if selection is None else selection.spatial.nonzero().flatten().tolist(),
            timings_ms=timings,
        )


def create_pipeline(backbone: Backbone, settings: Settings) -> ChunkPipeline:
    """A fresh stream on `backbone`: its session (prefix prefilled) and its pruner."""
    session = StreamSession(backbone, settings.session, settings.model.system_prompt)
    return ChunkPipeline(backbone, session, Pruner(settings.pruning, backbone))
