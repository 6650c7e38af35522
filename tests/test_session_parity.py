"""Streaming appends against transformers' own offline forward (the oracle).

The offline side builds the whole clip's prompt with the official processor, takes positions
from the thinker's own `get_rope_index(use_audio_in_video=True)`, drops the pruned tokens from
the sequence, and runs one forward. The streaming side appends chunk by chunk to the session.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_helpers import (
    QUESTION,
    SYSTEM,
    load_tiny_backbone,
    official_inputs,
    offline_logits,
    put_one_video_token_off,
)

from streamguard.config import SessionSettings
from streamguard.engine import kv
from streamguard.engine.session import QuestionTooLongError, SamplingParams, StreamSession


def random_chunks(rng: np.random.Generator, count: int, height: int = 84, width: int = 112):
    frames = [
        [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)] for _ in range(count)
    ]
    audio = [(rng.standard_normal(32000) * 0.1).astype(np.float32) for _ in range(count)]
    return frames, audio


def stream(backbone, encoded, keeps, drops, settings=None):
    session = StreamSession(backbone, settings or SessionSettings(), SYSTEM)
    for chunk, keep, drop in zip(encoded, keeps, drops, strict=True):
        session.append_chunk(chunk, keep=keep, drop_video=drop)
    return session


@pytest.fixture(scope="module")
def clip(tiny_backbone):
    rng = np.random.default_rng(7)
    frames, audio = random_chunks(rng, 3)
    encoded = [
        tiny_backbone.encode(tiny_backbone.preprocess(f, a)) for f, a in zip(frames, audio, strict=True)
    ]
    return frames, audio, encoded, official_inputs(tiny_backbone, frames, audio)


def test_unpruned_stream_lays_out_tokens_and_positions_like_the_official_processor(tiny_backbone, clip):
    _, _, encoded, inputs = clip
    backbone = tiny_backbone
    config = backbone.model.config
    layout = backbone.prompt_layout(SYSTEM)
    ids = list(layout.prefix)
    prefix_positions, base = backbone.prefix_positions(len(layout.prefix))
    positions = [prefix_positions]
    for slot, chunk in enumerate(encoded):
        video_pos, audio_pos = backbone.chunk_positions(chunk, slot, base)
        ids += [config.video_token_index] * chunk.num_video_tokens + [
            config.audio_token_index
        ] * chunk.audio.shape[0]
        positions += [video_pos, audio_pos]
    question = layout.close + backbone.tokenize(QUESTION) + layout.suffix
    ids += question
    positions.append(
        backbone.question_positions(base + backbone.chunk_period() * len(encoded), len(question))
    )
    assert ids == inputs["input_ids"][0].tolist()
    reference, _ = backbone.model.model.get_rope_index(
        inputs["input_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
        use_audio_in_video=True,
        audio_seqlens=inputs["feature_attention_mask"].sum(-1),
        second_per_grids=inputs["video_second_per_grid"],
    )
    assert torch.equal(torch.cat(positions, dim=1), reference[:, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_logits_equal_offline_forward_with_random_pruning(tiny_backbone, clip, seed):
    _, _, encoded, inputs = clip
    gen = torch.Generator().manual_seed(seed)
    keeps, drops = [], []
    for i, chunk in enumerate(encoded):
        n = chunk.num_video_tokens
        keeps.append(
            torch.randperm(n, generator=gen)[: int(torch.randint(0, n + 1, (1,), generator=gen))]
            .sort()
            .values
        )
        drops.append(i == seed % len(encoded))
    session = stream(tiny_backbone, encoded, keeps, drops)
    streaming = session.question_logits(QUESTION)
    offline = offline_logits(tiny_backbone, inputs, encoded, keeps, drops)
    num_question = streaming.shape[0]
    assert (streaming - offline[-num_question:]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_parity_breaks_when_one_position_is_off(tiny_backbone, clip, monkeypatch, axis):
    """The parity check is sharp: one video token one step off on any one axis shows up."""
    _, _, encoded, inputs = clip
    put_one_video_token_off(monkeypatch, tiny_backbone, axis)
    keeps = [None] * len(encoded)
    drops = [False] * len(encoded)
    session = stream(tiny_backbone, encoded, keeps, drops)
    streaming = session.question_logits(QUESTION)
    monkeypatch.undo()
    offline = offline_logits(tiny_backbone, inputs, encoded, keeps, drops)
    assert (streaming - offline[-streaming.shape[0] :]).abs().max().item() > 1e-4


def test_previous_policy_eviction_keeps_parity(tiny_backbone, clip):
    _, _, encoded, inputs = clip
    session = StreamSession(tiny_backbone, SessionSettings(), SYSTEM)
    session.append_chunk(encoded[0])
    last = session.append_chunk(encoded[1])
    session.evict_video(last, encoded[1])  # chunk 2 looked like chunk 1: chunk 1's video goes
    session.append_chunk(encoded[2])
    offline = offline_logits(tiny_backbone, inputs, encoded, [None] * 3, [False, True, False])
    streaming = session.question_logits(QUESTION)
    assert (streaming - offline[-streaming.shape[0] :]).abs().max().item() <= 1e-4


def test_question_leaves_the_cache_byte_identical_and_answers_are_independent(tiny_backbone, clip):
    _, _, encoded, _ = clip
    session = stream(tiny_backbone, encoded[:2], [None, None], [False, False])
    before = kv.snapshot(session.cache)
    params = SamplingParams(max_new_tokens=8)
    first = session.answer("Who is speaking?", params)
    after = kv.snapshot(session.cache)
    assert len(before) == len(after)
    for (k0, v0), (k1, v1) in zip(before, after, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    second = session.answer("What colour is the sky?", params)
    alone = stream(tiny_backbone, encoded[:2], [None, None], [False, False]).answer(
        "What colour is the sky?", params
    )
    assert second == alone
    assert session.answer("Who is speaking?", params) == first
    assert session.stats.questions == 3


def test_deltas_concatenate_to_the_answer(tiny_backbone, clip):
    _, _, encoded, _ = clip
    session = stream(tiny_backbone, encoded[:1], [None], [False])
    deltas = list(session.ask("Describe it.", SamplingParams(max_new_tokens=6, temperature=0.8, seed=3)))
    assert "".join(deltas) == session.answer(
        "Describe it.", SamplingParams(max_new_tokens=6, temperature=0.8, seed=3)
    )
    assert session.stats.last_answer.generated_tokens <= 6


def test_an_answer_closed_early_reports_the_tokens_it_generated_and_restores_the_cache(tiny_backbone, clip):
    _, _, encoded, _ = clip
    session = stream(tiny_backbone, encoded[:1], [None], [False])
    before = kv.cache_length(session.cache)
    deltas = session.ask("Describe it.", SamplingParams(max_new_tokens=20, temperature=1.0, seed=0))
    first = next(deltas)
    deltas.close()  # what a cancelled question does
    assert first
    assert session.stats.last_answer.generated_tokens >= 1
    assert kv.cache_length(session.cache) == before


def test_oversized_and_empty_questions_are_refused(tiny_backbone):
    session = StreamSession(tiny_backbone, SessionSettings(max_question_chars=10), SYSTEM)
    with pytest.raises(QuestionTooLongError, match="limit is 10"):
        session.answer("x" * 11)
    with pytest.raises(ValueError, match="empty"):
        session.answer("   ")


def test_rebased_cache_equals_a_fresh_cache_at_shifted_positions(tiny_backbone, clip):
    _, _, encoded, _ = clip
    backbone = tiny_backbone
    session = stream(backbone, encoded, [None] * 3, [False] * 3)
    delta = 3 * backbone.chunk_period()
    session.rebase(delta)

    fresh = backbone.new_cache()
    prefix_positions, base = backbone.prefix_positions(len(session.layout.prefix))
    backbone.forward(
        backbone.embed_tokens(session.layout.prefix), prefix_positions - delta, fresh, logits="none"
    )
    for slot, chunk in enumerate(encoded):
        video_pos, audio_pos = backbone.chunk_positions(chunk, slot, base)
        embeds = torch.cat([chunk.video_flat, chunk.audio])
        backbone.forward(embeds, torch.cat([video_pos, audio_pos], dim=1) - delta, fresh, logits="none")
    for (keys, values), layer in zip(kv.snapshot(session.cache), fresh.layers, strict=True):
        assert (keys - layer.keys).abs().max() <= 1e-4 and (values - layer.values).abs().max() <= 1e-4
    ids = session.question_tokens(QUESTION)
    expected = backbone.forward(
        backbone.embed_tokens(ids), session.question_positions(len(ids)), fresh, logits="all"
    )
    assert (session.question_logits(QUESTION) - expected).abs().max().item() <= 1e-4


def test_long_stream_stays_in_range_and_answers_as_without_rebasing(tiny_backbone, clip):
    _, _, encoded, _ = clip
    chunk_tokens = encoded[0].num_video_tokens + encoded[0].audio.shape[0]
    budget = 2 * chunk_tokens
    limited = SessionSettings(token_budget=budget, position_limit=400, position_headroom=64)
    sequence = [encoded[i % 3] for i in range(12)]
    rebased = stream(tiny_backbone, sequence, [None] * 12, [False] * 12, limited)
    plain = stream(tiny_backbone, sequence, [None] * 12, [False] * 12, SessionSettings(token_budget=budget))
    assert rebased.stats.rebases == 2 and plain.stats.rebases == 0
    assert rebased.stats.chunks_evicted == plain.stats.chunks_evicted == 10
    assert [c.slot for c in rebased.chunks] == [10, 11]
    ids = rebased.question_tokens(QUESTION)
    assert rebased.question_positions(len(ids)).max() < 400 <= plain.question_positions(len(ids)).max()
    assert rebased.cache_tokens == plain.cache_tokens
    difference = rebased.question_logits(QUESTION) - plain.question_logits(QUESTION)
    assert difference.abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def tiny_backbone(checkpoint):
    return load_tiny_backbone(checkpoint)
