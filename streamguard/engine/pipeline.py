"""One chunk through the model path: pre-filter → preprocess → encoders → selection → append.

Preprocessing needs no model and runs anywhere (`prepare_chunk`: the scheduler's pool). The pixel
pre-filter (`ChunkPipeline.screen`, `screened`) judges a chunk before any encoder: one it finds
unchanged goes through the audio encoder only and is appended without video. The encoders take
several chunks of any streams at once (`encode_chunks`); selection and the append are one
stream's (`ChunkPipeline.process_encoded`). The model calls are blocking and GPU-bound: callers
on an event loop run them in the model's worker thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from streamguard.backbones.base import Backbone, ChunkInputs, EncodedChunk
from streamguard.config import ReferenceMode, Settings
from streamguard.engine.session import CachedChunk, StreamSession
from streamguard.pruning.prefilter import Screening, Signature, signature
from streamguard.pruning.pruner import PruneDecision, Pruner

if TYPE_CHECKING:
    from streamguard.ingest.chunker import AVChunk

T = TypeVar("T")

STAGES = ("prefilter", "preprocess", "vision_encode", "audio_encode", "select", "prefill")


@dataclass
class ChunkReport:
    """What became of one chunk, for stats tables, metrics and the browser's overlay."""

    index: int
    start: float
    video_tokens_in: int
    video_tokens_kept: int
    audio_tokens: int
    video_dropped: bool  # this chunk's video was redundant and never entered the cache
    encoder_skipped: bool  # the pre-filter found it unchanged: its video was never encoded
    prefilter: str | None  # the pre-filter's reason (`Screening.reason`); None: not screened
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
class PreparedChunk:
    """A chunk through preprocessing: the encoders' inputs, ready for the model (in pinned host
    memory when the model is on CUDA, so the copy to the device does not block)."""

    chunk: AVChunk
    inputs: ChunkInputs
    preprocess_ms: float
    signature: Signature | None = None  # the pre-filter's view of the frames, made ahead
    screening: Screening | None = None  # the pre-filter's verdict, None when it did not run


@dataclass
class EncodedAVChunk:
    """A chunk through preprocessing and the encoders, before selection."""

    chunk: AVChunk
    encoded: EncodedChunk
    resized_hw: tuple[int, int] | None
    timings_ms: dict[str, float]  # preprocess, vision_encode, audio_encode (when profiled)
    screening: Screening | None = None  # the pre-filter's verdict, None when it did not run

    @property
    def encoder_skipped(self) -> bool:
        return self.screening is not None and self.screening.skip


def prepare_chunk(backbone: Backbone, chunk: AVChunk) -> PreparedChunk:
    """The official video processor and log-mel on one chunk: CPU work that needs no model, so it
    runs off the worker thread (the scheduler's pool)."""
    started = time.perf_counter()
    inputs = backbone.preprocess(chunk.frames, chunk.audio)
    if backbone.device.type == "cuda":
        inputs = _pinned(inputs)
    return PreparedChunk(chunk, inputs, (time.perf_counter() - started) * 1000)


def _pinned(inputs: ChunkInputs) -> ChunkInputs:
    def pin(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None or tensor.is_cuda else tensor.pin_memory()

    return replace(
        inputs, pixel_values_videos=pin(inputs.pixel_values_videos), input_features=pin(inputs.input_features)
    )


def encode_chunks(
    backbone: Backbone, prepared: Sequence[PreparedChunk], profile: bool = False
) -> list[EncodedAVChunk]:
    """Several chunks (of any streams) through the encoders: one vision-tower call for those with
    video (a chunk the pre-filter skipped has none left) and one audio-tower call for all.
    Profiled, each stage's time is shared out evenly among the chunks that went through it."""
    timings: dict[str, float] = {}
    batch = [p.inputs for p in prepared]
    with_video = [inputs.pixel_values_videos is not None for inputs in batch]
    visions: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(None, None)] * len(batch)
    if any(with_video):
        visions = _timed(backbone, timings, "vision_encode", lambda: backbone.encode_visions(batch), profile)
    audios = _timed(backbone, timings, "audio_encode", lambda: backbone.encode_audios(batch), profile)

    def shares(video: bool) -> dict[str, float]:
        through = {"vision_encode": sum(with_video) if video else 0, "audio_encode": len(batch)}
        return {stage: ms / through[stage] for stage, ms in timings.items() if through[stage]}

    return [
        EncodedAVChunk(
            p.chunk,
            EncodedChunk(video=video, audio=audio, deepstack=deepstack),
            p.inputs.resized_hw,
            {"preprocess": p.preprocess_ms, **shares(has_video)} if profile else {},
            p.screening,
        )
        for p, (video, deepstack), audio, has_video in zip(prepared, visions, audios, with_video, strict=True)
    ]


def encode_chunk(
    backbone: Backbone, chunk: AVChunk, screening: Screening | None = None, profile: bool = True
) -> EncodedAVChunk:
    """Preprocess a chunk and run its encoders (each stage timed unless `profile` is off); a
    chunk the pre-filter skips (`screening.skip`) has its frames neither preprocessed nor encoded."""
    skip = screening is not None and screening.skip
    prepared = prepare_chunk(backbone, replace(chunk, frames=[]) if skip else chunk)
    return encode_chunks(backbone, [replace(prepared, chunk=chunk, screening=screening)], profile)[0]


def _timed(
    backbone: Backbone, timings: dict[str, float], stage: str, work: Callable[[], T], profile: bool
) -> T:
    """Run one stage; profiled, wait for the device to finish it and note its time (serving does
    not: a synchronize per stage would keep CPU and GPU work from overlapping)."""
    if not profile:
        return work()
    started = time.perf_counter()
    result = work()
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)
    timings[stage] = (time.perf_counter() - started) * 1000
    return result


class ChunkPipeline:
    """Drives one stream's session with its pruner, chunk after chunk."""

    def __init__(self, backbone: Backbone, session: StreamSession, pruner: Pruner, profile: bool = False):
        self.backbone = backbone
        self.session = session
        self.pruner = pruner
        self.profile = profile  # per-stage timings in each report
        # The newest appended chunk and its features: the `previous` drop policy may evict its video.
        self._last: tuple[CachedChunk, EncodedChunk] | None = None
        # The token grid and resized frame size of the last chunk whose video was kept: a chunk
        # the pre-filter skips has the same frames' size, so it would have had the same tokens.
        self._kept_grid: tuple[tuple[int, int, int], tuple[int, int] | None] | None = None

    def reconfigure(self, pruning: Mapping[str, Any], sampling: Mapping[str, Any]) -> None:
        """Prune the next chunks with `pruning` changes and sample the next questions with
        `sampling` changes (SessionSettings fields). On the worker, between two chunks
        (`Scheduler.reconfigure`), so no chunk is pruned half one way and half the other; an
        answer being generated keeps the sampling it started with."""
        if pruning:
            self.pruner.reconfigure(pruning)
        if sampling:
            self.session.settings = self.session.settings.model_copy(update=dict(sampling))

    def process(self, chunk: AVChunk) -> ChunkReport:
        return self.process_encoded(encode_chunk(self.backbone, chunk, self.screen(chunk), self.profile))

    def prepare(self, chunk: AVChunk) -> PreparedChunk:
        """All of a chunk's work that needs neither the model nor the stream's state, for any
        thread: the encoders' inputs, and the pre-filter's signature of its frames."""
        prepared = prepare_chunk(self.backbone, chunk)
        prefilter = self.pruner.prefilter
        if prefilter is not None and chunk.frames:
            prepared.signature = signature(chunk.frames, prefilter.settings)
        return prepared

    def screen(self, chunk: AVChunk, current: Signature | None = None) -> Screening | None:
        """The pre-filter's verdict on a chunk, before any encoder: pass it to `encode_chunk`
        (a skip spares the vision encoder), then `process_encoded`. None: no pre-filter here
        (disabled, or the drop rule is off) or no frames; the chunk is encoded."""
        prefilter = self.pruner.prefilter
        if prefilter is None or not chunk.frames:
            return None
        if self.session.chunks:  # a skip must not be the append that evicts the reference
            largest = max(cached.video_tokens_in + cached.audio_tokens for cached in self.session.chunks)
            self._forget_references_leaving_the_cache(largest)
        return prefilter.screen(chunk.frames, current)

    def screened(self, prepared: PreparedChunk) -> PreparedChunk:
        """A chunk preprocessed ahead (off the worker) with the pre-filter's verdict, taken now, in
        the stream's order; a skipped chunk loses its video inputs, so no encoder sees its frames."""
        screening = self.screen(prepared.chunk, prepared.signature)
        if screening is None:
            return prepared
        inputs = prepared.inputs
        if screening.skip:
            inputs = replace(inputs, pixel_values_videos=None, video_grid_thw=None, resized_hw=None)
        return replace(prepared, inputs=inputs, screening=screening)

    def process_encoded(self, prepared: EncodedAVChunk) -> ChunkReport:
        """Select, then append, a chunk already through the encoders (one encoding can feed the
        pipelines of several methods: `eval` replays every method off the same features, unscreened)."""
        chunk, encoded, screening = prepared.chunk, prepared.encoded, prepared.screening
        timings = dict(prepared.timings_ms)
        if screening is not None and self.profile:
            timings["prefilter"] = screening.ms
        self._forget_references_leaving_the_cache(encoded.num_video_tokens + int(encoded.audio.shape[0]))
        decision = self.pruner.plan(encoded, chunk.index, screening)
        if self.profile:
            timings["select"] = decision.select_ms
        evicted = self._evict_previous(decision)
        skipped_grid = self._kept_grid if prepared.encoder_skipped else None
        cached = _timed(
            self.backbone,
            timings,
            "prefill",
            lambda: self.session.append_chunk(
                encoded,
                keep=decision.keep,
                drop_video=decision.drop_video,
                index=chunk.index,
                video_tokens_in=None if skipped_grid is None else math.prod(skipped_grid[0]),
            ),
            self.profile,
        )
        self._last = (cached, encoded)
        video_kept = encoded.video is not None and not decision.drop_video
        if video_kept:
            self._kept_grid = (tuple(encoded.video.shape[:3]), prepared.resized_hw)
        if screening is not None:
            self.pruner.prefilter.record(screening, chunk.index, video_kept)
        grid, resized_hw = skipped_grid or (_grid(encoded), prepared.resized_hw)
        selection = decision.selection
        return ChunkReport(
            index=chunk.index,
            start=chunk.start,
            video_tokens_in=cached.video_tokens_in,
            video_tokens_kept=cached.video_tokens,
            audio_tokens=cached.audio_tokens,
            video_dropped=decision.drop_video,
            encoder_skipped=prepared.encoder_skipped,
            prefilter=None if screening is None else screening.reason,
            previous_video_evicted=evicted,
            audio_missing=chunk.audio_missing,
            similarity=decision.similarity,
            reference_mode=decision.reference_mode,
            grid=grid,
            resized_hw=resized_hw,
            semantic=[] if selection is None else selection.semantic.nonzero().flatten().tolist(),
            spatial=[] if selection is None else selection.spatial.nonzero().flatten().tolist(),
            timings_ms=timings,
        )

    def _forget_references_leaving_the_cache(self, largest: int) -> None:
        # The drop rule and the pre-filter compare with the last chunk whose video was kept. Once
        # the token budget evicts that chunk the cache holds nothing of its scene, so a static
        # stream would be left with audio only. Both start afresh when an append of `largest`
        # tokens (a chunk at its largest: all its video) would push the reference out: this chunk
        # then keeps its video and becomes the reference. The pre-filter asks before encoding,
        # with the largest chunk the cache holds, so a skipped chunk is never that append.
        survivors = self.session.chunks[self.session.evictions_for(largest) :]
        for rule in (self.pruner.drop_rule, self.pruner.prefilter):
            reference = None if rule is None else rule.reference_chunk
            if reference is not None and (not survivors or reference < survivors[0].index):
                rule.reset()  # chunks leave oldest first

    def _evict_previous(self, decision: PruneDecision) -> bool:
        if not decision.evict_previous or self._last is None:
            return False
        cached, encoded = self._last
        if not self.session.chunks or self.session.chunks[-1] is not cached or cached.video_tokens == 0:
            return False
        self.session.evict_video(cached, encoded)
        return True


def _grid(encoded: EncodedChunk) -> tuple[int, int, int] | None:
    return None if encoded.video is None else tuple(encoded.video.shape[:3])


def create_pipeline(backbone: Backbone, settings: Settings, profile: bool | None = None) -> ChunkPipeline:
    """A fresh stream on `backbone`: its session (prefix prefilled) and its pruner; per-stage
    timings when `profile` (None: `engine.profile_stages`)."""
    session = StreamSession(backbone, settings.session, settings.model.system_prompt)
    profile = settings.engine.profile_stages if profile is None else profile
    return ChunkPipeline(backbone, session, Pruner(settings.pruning, backbone), profile)
