"""One stream's rolling KV cache: a fixed prompt prefix, then chunks appended one by one.

Layout in the cache: [prefix][chunk][chunk]…, each chunk its kept video tokens and its audio
tokens in the backbone's chunk order (Qwen2.5-Omni: all video, then all audio; video-SALMONN 2+:
each temporal patch's video, then its audio), at the positions the backbone gives a chunk in its
stream slot. Pruned tokens keep the positions and relative order they had before pruning, so the
cache equals one offline forward over the pruned sequence. A question is appended after the last
chunk, answered, then cut off again.

Positions: slots count chunks from the stream's start; `position_offset` is subtracted from every
layout position. When the next chunk would climb past the model's range (less the headroom a
question needs), the whole cache is rotated down (`Backbone.rotate_cache`) so the oldest retained
chunk sits at the stream's base again; rotary attention only sees differences, so nothing else
changes.

Long memory (`streamguard/memory/`) hooks in at two points and nowhere else: `eviction_sink`
receives each chunk `_make_room` evicts (its KV and the offset its keys were rotated at) before
it leaves the cache, and `ask(recall=...)` lets a `Recall` put recalled KV after the window once
the question's cache length is noted, so the `finally` that cuts the question off cuts them too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from streamguard.backbones.base import Backbone, DeepstackFeatures, EncodedChunk
from streamguard.config import SessionSettings
from streamguard.engine import kv


class QuestionTooLongError(ValueError):
    """A question over the configured length."""


class EmptyQuestionError(ValueError):
    """A question with no text."""


@dataclass
class CachedChunk:
    """Where one appended chunk lives in the cache."""

    index: int  # the chunk's number in the stream
    slot: int  # its position slot (chunks since the stream's start)
    start: int  # cache offset of its first token
    video_tokens: int  # video tokens held (after pruning / dropping)
    audio_tokens: int
    video_tokens_in: int  # video tokens before pruning
    appended_at: float = field(default_factory=time.time)  # unix seconds it entered the cache

    @property
    def length(self) -> int:
        return self.video_tokens + self.audio_tokens


@dataclass
class EvictedChunk:
    """A chunk on its way out of the cache: its KV (on the host) with positions baked in."""

    chunk: CachedChunk
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per layer, (1, heads, n, d)
    position_offset: int  # the session's offset when the keys were last rotated


class Recall(Protocol):
    """What `ask` needs from a recall: put KV after the window, before the question goes in."""

    def load(self, session: StreamSession, question_ids: list[int]) -> int:
        """Append recalled chunks' KV to `session.cache`; return how many tokens it added."""
        ...


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class AnswerStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    context_tokens: int = 0
    time_to_first_delta_s: float | None = None
    total_s: float = 0.0
    finish_reason: str = "length"


@dataclass
class SessionStats:
    chunks_appended: int = 0
    chunks_evicted: int = 0
    video_spans_evicted: int = 0
    rebases: int = 0
    video_tokens_in: int = 0
    video_tokens_kept: int = 0
    audio_tokens: int = 0
    questions: int = 0
    last_answer: AnswerStats = field(default_factory=AnswerStats)


class StreamSession:
    """The rolling cache of one stream on one backbone."""

    def __init__(self, backbone: Backbone, settings: SessionSettings, system_prompt: str):
        self.backbone = backbone
        self.settings = settings
        self.layout = backbone.prompt_layout(system_prompt)
        self.cache = backbone.new_cache()
        self.chunks: list[CachedChunk] = []
        self.next_slot = 0
        self.position_offset = 0
        self.stats = SessionStats()
        # Receives every evicted chunk before its KV leaves the cache (long memory); None: dropped.
        self.eviction_sink: Callable[[EvictedChunk], None] | None = None
        self.prefix_length = len(self.layout.prefix)
        self.base = self._prefill_prefix(self.cache)

    # -- chunks ----------------------------------------------------------------------------

    def append_chunk(
        self,
        encoded: EncodedChunk,
        keep: torch.Tensor | None = None,
        drop_video: bool = False,
        index: int | None = None,
        video_tokens_in: int | None = None,
    ) -> CachedChunk:
        """Append a chunk: the video tokens at `keep` (flat indices, sorted; None keeps all, an
        empty tensor none) unless `drop_video`, then all its audio tokens. `video_tokens_in`: the
        video tokens of a chunk whose video was never encoded (the pre-filter skipped it)."""
        video_in = encoded.num_video_tokens if video_tokens_in is None else video_tokens_in
        video_embeds, keep = self._kept_video(encoded, keep, drop_video)
        new_tokens = int(keep.numel()) + encoded.audio.shape[0]
        self._make_room(new_tokens)
        self._ensure_position_room(encoded)
        slot = self.next_slot
        video_positions, audio_positions = self.backbone.chunk_positions(encoded, slot, self.base)
        video_rank, audio_rank = self.backbone.chunk_order(encoded)
        order = torch.argsort(torch.cat([video_rank[keep], audio_rank]))
        embeds = encoded.audio if video_embeds is None else torch.cat([video_embeds, encoded.audio])
        embeds = embeds[order.to(embeds.device)]
        positions = (
            torch.cat([video_positions[:, keep], audio_positions], dim=1)[:, order] - self.position_offset
        )
        deepstack = _kept_deepstack(encoded, keep, order)
        chunk = CachedChunk(
            index=self.stats.chunks_appended if index is None else index,
            slot=slot,
            start=kv.cache_length(self.cache),
            video_tokens=int(keep.numel()),
            audio_tokens=int(encoded.audio.shape[0]),
            video_tokens_in=video_in,
        )
        self.backbone.forward(embeds, positions, self.cache, logits="none", deepstack=deepstack)
        self.chunks.append(chunk)
        self.next_slot += 1
        self.stats.chunks_appended += 1
        self.stats.video_tokens_in += video_in
        self.stats.video_tokens_kept += chunk.video_tokens
        self.stats.audio_tokens += chunk.audio_tokens
        return chunk

    def _kept_video(
        self, encoded: EncodedChunk, keep: torch.Tensor | None, drop_video: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        flat = encoded.video_flat
        if flat is None or drop_video:
            return None, torch.empty(0, dtype=torch.long)
        if keep is None:
            keep = torch.arange(flat.shape[0])
        keep = keep.to("cpu", torch.long)
        if keep.numel() and (keep.min() < 0 or keep.max() >= flat.shape[0]):
            raise IndexError(f"keep indices must lie in [0, {flat.shape[0]}); got {keep.min()}..{keep.max()}")
        if keep.numel() > 1 and not bool((keep[1:] > keep[:-1]).all()):
            raise ValueError("keep indices must be sorted and unique: tokens go in the backbone's order")
        return flat[keep.to(flat.device)], keep

    def evict_video(self, chunk: CachedChunk, encoded: EncodedChunk) -> None:
        """Drop an appended chunk's video but keep its audio (the `previous` drop policy).

        Only the newest chunk can lose its video exactly: its audio was computed attending to
        that video, so the chunk is cut off and its audio appended again at its own positions.
        """
        if not self.chunks or chunk is not self.chunks[-1]:
            raise ValueError("only the most recently appended chunk's video can be evicted")
        if chunk.video_tokens == 0:
            return
        kv.truncate(self.cache, chunk.start)
        _, audio_positions = self.backbone.chunk_positions(encoded, chunk.slot, self.base)
        self.backbone.forward(
            encoded.audio, audio_positions - self.position_offset, self.cache, logits="none"
        )
        self.stats.video_tokens_kept -= chunk.video_tokens
        chunk.video_tokens = 0
        self.stats.video_spans_evicted += 1

    def evictions_for(self, new_tokens: int) -> int:
        """How many of the oldest chunks an append of `new_tokens` evicts to fit the token budget."""
        excess = self.context_tokens + new_tokens - self.settings.token_budget
        count = 0
        for chunk in self.chunks:
            if excess <= 0:
                break
            excess -= chunk.length
            count += 1
        return count

    def _make_room(self, new_tokens: int) -> None:
        """Evict the oldest whole chunks until the new one fits the token budget."""
        for _ in range(self.evictions_for(new_tokens)):
            oldest = self.chunks.pop(0)
            if self.eviction_sink is not None:
                span = kv.copy_span(self.cache, oldest.start, oldest.start + oldest.length)
                self.eviction_sink(EvictedChunk(oldest, span, self.position_offset))
            kv.remove_span(self.cache, oldest.start, oldest.start + oldest.length)
            for chunk in self.chunks:
                chunk.start -= oldest.length
            self.stats.chunks_evicted += 1

    def _ensure_position_room(self, encoded: EncodedChunk) -> None:
        period = self.backbone.chunk_period()
        extent = 0 if encoded.video is None else max(encoded.video.shape[1], encoded.video.shape[2])
        top = self.base + period * (self.next_slot + 1) + extent - self.position_offset
        if top + self.settings.position_headroom <= self.position_limit:
            return
        oldest_slot = self.chunks[0].slot if self.chunks else self.next_slot
        delta = period * oldest_slot - self.position_offset
        if delta <= 0 or top - delta + self.settings.position_headroom > self.position_limit:
            raise RuntimeError(
                "the token budget spans more positions than the model's range less the question headroom; "
                "lower session.token_budget or session.position_headroom"
            )
        self.rebase(delta)

    def rebase(self, delta: int) -> None:
        """Shift every cached and future position down by `delta` (keeps positions in range).

        The chunks' keys are rotated (in float32, one rounding to the cache's dtype); a chunk
        lives through few re-bases before it is evicted. The prompt prefix lives through all of
        them (~75 a day at the 7B defaults), so it is prefilled afresh at its shifted positions
        instead of rotated again: in bf16 its keys stay what a fresh prefill gives, where
        rotating them every time drifts by a bf16 rounding per re-base. Its keys and values are
        replaced; whatever keeps copies of the cache's prefix must take them after.
        """
        self.backbone.rotate_cache(self.cache, delta)
        self.position_offset += delta
        fresh = self.backbone.new_cache()
        self._prefill_prefix(fresh)
        kv.overwrite_head(self.cache, fresh)
        self.stats.rebases += 1

    def _prefill_prefix(self, cache: Any) -> int:
        """Prefill the prompt prefix into `cache` at the session's current offset; the base."""
        positions, base = self.backbone.prefix_positions(self.prefix_length)
        embeds = self.backbone.embed_tokens(self.layout.prefix)
        self.backbone.forward(embeds, positions - self.position_offset, cache, logits="none")
        return base

    @property
    def position_limit(self) -> int:
        return self.settings.position_limit or self.backbone.max_positions

    # -- questions -------------------------------------------------------------------------

    def question_tokens(self, question: str) -> list[int]:
        text = question.strip()
        if not text:
            raise EmptyQuestionError("the question is empty")
        if len(text) > self.settings.max_question_chars:
            raise QuestionTooLongError(
                f"the question has {len(text)} characters; the limit is {self.settings.max_question_chars}"
            )
        return self.layout.close + self.backbone.tokenize(text) + self.layout.suffix

    def question_logits(self, question: str, recall: Recall | None = None) -> torch.Tensor:
        """Logits over the question's prompt tokens, cache left as it was (fidelity and tests)."""
        ids = self.question_tokens(question)
        context_length = kv.cache_length(self.cache)
        try:
            if recall is not None:
                recall.load(self, ids)
            return self.backbone.forward(
                self.backbone.embed_tokens(ids), self.question_positions(len(ids)), self.cache, logits="all"
            )
        finally:
            kv.truncate(self.cache, context_length)

    def question_positions(self, num_tokens: int) -> torch.Tensor:
        """Where a question of `num_tokens` prompt tokens goes: right after the newest chunk's slot."""
        start = self.base + self.backbone.chunk_period() * self.next_slot - self.position_offset
        return self.backbone.question_positions(start, num_tokens)

    def ask(
        self, question: str, params: SamplingParams | None = None, recall: Recall | None = None
    ) -> Iterator[str]:
        """Yield the answer's text deltas as they decode; the stream's cache is left as it was.
        `recall` puts older chunks' KV beside the window for this answer only."""
        decoder = self.start_answer(question, params, recall)
        try:
            while not decoder.finished:
                embeds, positions = decoder.next_input()
                delta = decoder.accept(self.backbone.forward(embeds, positions, self.cache)[-1])
                if delta is not None:
                    yield delta
        finally:  # a cancelled answer (generator closed early) still reports what it generated
            decoder.close()

    def start_answer(
        self, question: str, params: SamplingParams | None = None, recall: Recall | None = None
    ) -> AnswerDecoder:
        """An answer to decode step by step (`ask` drives one; the scheduler drives several
        streams' in one batched forward), its recalled chunks already loaded. A question the
        session refuses raises here, as does a failed recall (the cache left as it was)."""
        params = params or SamplingParams(
            self.settings.max_new_tokens, self.settings.temperature, self.settings.top_p
        )
        ids = self.question_tokens(question)
        decoder = AnswerDecoder(self, ids, params)
        if recall is not None:
            try:
                decoder.stats.context_tokens += recall.load(self, ids)
            except BaseException:
                decoder.close()
                raise
        return decoder

    def answer(self, question: str, params: SamplingParams | None = None) -> str:
        return "".join(self.ask(question, params))

    # -- accounting ------------------------------------------------------------------------

    @property
    def context_tokens(self) -> int:
        """Chunk tokens held (the prefix is not counted against the budget)."""
        return sum(chunk.length for chunk in self.chunks)

    @property
    def cache_tokens(self) -> int:
        return kv.cache_length(self.cache)

    @property
    def cache_bytes(self) -> int:
        return kv.cache_bytes(self.cache)


class AnswerDecoder:
    """One answer being decoded: whoever runs the model feeds it `next_input()` (the question's
    prompt, then each new token) appended to the session's cache, and hands the last token's
    logits to `accept()`, until `finished`. `close()` cuts the question (and anything recalled for
    it) off again, so the cache is left as it was however the answer ended."""

    def __init__(self, session: StreamSession, ids: list[int], params: SamplingParams):
        self.session = session
        self.params = params
        self.stats = AnswerStats(prompt_tokens=len(ids), context_tokens=session.context_tokens)
        self.generated: list[int] = []
        self.finished = False
        self._started = time.perf_counter()
        self._context_length = kv.cache_length(session.cache)
        self._generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self._emitted = ""
        self._closed = False
        backbone = session.backbone
        self._input = (backbone.embed_tokens(ids), session.question_positions(len(ids)))
        self._next_position = int(self._input[1][0, -1]) + 1

    def next_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) embeds and (3, n) positions to append to the session's cache next."""
        return self._input

    def accept(self, logits: torch.Tensor) -> str | None:
        """Take the last fed token's (vocab,) logits: pick the next token; the new text, if any."""
        backbone = self.session.backbone
        token = _sample(logits, self.params, self._generator)
        if token in backbone.eos_token_ids:
            self.stats.finish_reason = "stop"
            self.finished = True
            return None
        self.generated.append(token)
        if len(self.generated) == self.params.max_new_tokens:
            self.finished = True
        else:
            position = torch.full((3, 1), self._next_position, dtype=torch.long)
            self._input = (backbone.embed_tokens([token]), position)
            self._next_position += 1
        text = backbone.decode(self.generated)
        # hold back a partly decoded multi-byte character until it completes
        if len(text) <= len(self._emitted) or text.endswith("\ufffd"):
            return None
        delta, self._emitted = text[len(self._emitted) :], text
        if self.stats.time_to_first_delta_s is None:
            self.stats.time_to_first_delta_s = time.perf_counter() - self._started
        return delta

    def close(self) -> None:
        """Cut the question and answer off the cache and record the answer's stats (once)."""
        if self._closed:
            return
        self._closed = True
        session = self.session
        kv.truncate(session.cache, self._context_length)
        self.stats.generated_tokens = len(self.generated)
        self.stats.total_s = time.perf_counter() - self._started
        session.stats.questions += 1
        session.stats.last_answer = self.stats


def _kept_deepstack(
    encoded: EncodedChunk, keep: torch.Tensor, order: torch.Tensor
) -> DeepstackFeatures | None:
    """The kept video tokens' deepstack features, marked where those tokens fall in the chunk's
    sequence (`order` sorts [kept video, audio] into it); a pruned token's go with it."""
    features = encoded.deepstack_flat
    if features is None or keep.numel() == 0:
        return None
    is_video = torch.zeros(order.numel(), dtype=torch.bool)
    is_video[: keep.numel()] = True
    return DeepstackFeatures(mask=is_video[order], features=features[:, keep.to(features.device)])


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.temperature <= 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1).cpu()
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
