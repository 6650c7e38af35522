"""Long memory against transformers' own offline forward (the oracle).

The tiered session evicts chunks past its token budget to host memory or disk, re-bases its
positions, and answers a question over [prefix][recalled chunks][window][question]. The oracle
is one forward of the thinker over the whole clip (official processor, `get_rope_index`
positions, never evicting, never re-based) whose attention mask shows each chunk the window it
was appended to and shows the question the prefix, the recalled chunks and the final window.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from cpu_helpers import one_torch_thread
from parity_helpers import (
    QUESTION,
    SYSTEM,
    load_tiny_backbone,
    official_inputs,
    offline_logits,
    offline_sequence,
)

from streamguard.config import MemorySettings, SessionSettings
from streamguard.engine import kv
from streamguard.engine.session import SamplingParams, StreamSession
from streamguard.memory.manager import MemoryManager
from streamguard.memory.spec import SpanRecall

CHUNKS = 8
WALL_START = 1_800_000_000.0  # unix seconds of the stream's start


@pytest.fixture(scope="module", params=["qwen2.5-omni", "qwen3-omni"])
def tiny_backbone(request, tmp_path_factory):
    """Both Omni thinkers: Qwen3-Omni's recalled keys carry its deepstack and interleaved layout."""
    from streamguard.backbones.tiny import TINY_BUILDERS

    folder = TINY_BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    with one_torch_thread():
        yield load_tiny_backbone(folder, "tiny" if request.param == "qwen2.5-omni" else "tiny-qwen3-omni")


@pytest.fixture(scope="module")
def clip(tiny_backbone):
    """Eight random chunks, randomly pruned, one with its video dropped."""
    rng = np.random.default_rng(11)
    frames = [[rng.integers(0, 256, (84, 112, 3), dtype=np.uint8) for _ in range(4)] for _ in range(CHUNKS)]
    audio = [(rng.standard_normal(32000) * 0.1).astype(np.float32) for _ in range(CHUNKS)]
    with one_torch_thread():
        encoded = [
            tiny_backbone.encode(tiny_backbone.preprocess(f, a)) for f, a in zip(frames, audio, strict=True)
        ]
        inputs = official_inputs(tiny_backbone, frames, audio)
    gen = torch.Generator().manual_seed(0)
    keeps = []
    for chunk in encoded:
        n = chunk.num_video_tokens
        keeps.append(
            torch.randperm(n, generator=gen)[: n // 2 + int(torch.randint(0, n // 2, (1,), generator=gen))]
            .sort()
            .values
        )
    drops = [i == 3 for i in range(CHUNKS)]
    return encoded, keeps, drops, inputs


def chunk_length(chunk, keep, drop) -> int:
    return (0 if drop else int(keep.numel())) + int(chunk.audio.shape[0])


def budget_for(clip) -> int:
    encoded, keeps, drops, _ = clip
    lengths = [chunk_length(*args) for args in zip(encoded, keeps, drops, strict=True)]
    return max(lengths) * 2  # two to three chunks in the window


def tiered_session(backbone, clip, memory: MemoryManager, limited_positions: bool):
    encoded, keeps, drops, _ = clip
    settings = SessionSettings(token_budget=budget_for(clip))
    if limited_positions:  # re-base every couple of chunks: room for the headroom and ~5 chunks
        limit = 64 + 5 * backbone.chunk_period()
        settings = SessionSettings(token_budget=budget_for(clip), position_limit=limit, position_headroom=64)
    session = StreamSession(backbone, settings, SYSTEM)
    stream_memory = memory.open(f"s{id(session)}", session)
    for i, (chunk, keep, drop) in enumerate(zip(encoded, keeps, drops, strict=True)):
        cached = session.append_chunk(chunk, keep=keep, drop_video=drop, index=i)
        cached.appended_at = WALL_START + 2.0 * (i + 1)  # a camera's pace: one chunk every 2 s
    return session, stream_memory


def windows(clip) -> tuple[list[list[int]], list[int]]:
    """The chunks each chunk saw when it was appended, and the final window: the budget rule
    (the oldest whole chunks leave until the new one fits), written out independently."""
    encoded, keeps, drops, _ = clip
    budget = budget_for(clip)
    held: list[int] = []
    lengths = [chunk_length(*args) for args in zip(encoded, keeps, drops, strict=True)]
    seen = []
    for i, length in enumerate(lengths):
        while held and sum(lengths[j] for j in held) + length > budget:
            held.pop(0)
        seen.append(list(held))
        held.append(i)
    return seen, held


def oracle_logits(backbone, clip, recalled: list[int]) -> torch.Tensor:
    encoded, keeps, drops, inputs = clip
    _, _, segments, _ = offline_sequence(backbone, inputs, encoded, keeps, drops)
    seen, final = windows(clip)
    visible = torch.zeros(CHUNKS + 2, CHUNKS + 2, dtype=torch.bool)  # [query segment+1, key segment+1]
    visible[:, 0] = True  # everything sees the prefix
    for chunk in range(CHUNKS):
        visible[chunk + 1, [c + 1 for c in seen[chunk] + [chunk]]] = True
    visible[CHUNKS + 1, [c + 1 for c in sorted(set(recalled) | set(final))] + [CHUNKS + 1]] = True
    segment = segments + 1
    mask = (
        visible[segment[:, None], segment[None, :]]
        & torch.ones(len(segment), len(segment), dtype=torch.bool).tril()
    )
    return offline_logits(backbone, inputs, encoded, keeps, drops, attention_mask=mask[None, None])


def memory_manager(backbone, tmp_path, **limits) -> MemoryManager:
    settings = MemorySettings(enabled=True, root=str(tmp_path / "memory"), **limits)
    return MemoryManager(backbone, settings, chunk_seconds=2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def unchanged(snapshot, session) -> bool:
    after = kv.snapshot(session.cache)
    return len(after) == len(snapshot) and all(
        torch.equal(k0, k1) and torch.equal(v0, v1)
        for (k0, v0), (k1, v1) in zip(snapshot, after, strict=True)
    )


def max_difference(session, recall, backbone, clip, recalled) -> float:
    streamed = session.question_logits(QUESTION, recall=recall)
    reference = oracle_logits(backbone, clip, recalled)
    return (streamed - reference[-streamed.shape[0] :]).abs().max().item()


@pytest.mark.parametrize("host_bytes", [2**30, 0], ids=["host", "disk"])
@pytest.mark.parametrize("limited_positions", [False, True], ids=["plain", "rebased"])
def test_span_recall_equals_the_masked_offline_forward(
    tiny_backbone, clip, tmp_path, host_bytes, limited_positions
):
    memory = memory_manager(tiny_backbone, tmp_path, host_bytes=host_bytes)
    session, stream_memory = tiered_session(tiny_backbone, clip, memory, limited_positions)
    _, final = windows(clip)
    assert [c.index for c in session.chunks] == final and final[0] >= 4
    if limited_positions:
        assert session.stats.rebases >= 2
        offsets = {p.position_offset for p in stream_memory.store.places()}
        assert len(offsets) >= 2  # the recalled chunks left the cache at different rotations
    tier = "host" if host_bytes else "disk"
    assert {stream_memory.store.tier_of(p.index) for p in stream_memory.store.places()} == {tier}
    before = kv.snapshot(session.cache)

    recall = stream_memory.recall(SpanRecall(2.0, 8.0))  # chunks 1, 2 and 3 (2 s each)
    assert max_difference(session, recall, tiny_backbone, clip, [1, 2, 3]) <= 1e-4
    assert [(s.from_s, s.to_s, s.chunks) for s in recall.spans] == [(2.0, 8.0, 3)]

    recall = stream_memory.recall(SpanRecall(0.0, 2.0))  # chunk 0 alone, and a gap to chunk 2
    assert max_difference(session, recall, tiny_backbone, clip, [0]) <= 1e-4

    wall = [datetime.fromtimestamp(WALL_START + t, UTC) for t in (4.5, 9.5)]  # chunks 2, 3 and 4
    recall = stream_memory.recall(SpanRecall(*wall))
    assert max_difference(session, recall, tiny_backbone, clip, [2, 3, 4]) <= 1e-4
    assert [(s.from_s, s.to_s, s.from_wall.timestamp()) for s in recall.spans] == [
        (4.0, 10.0, WALL_START + 4)
    ]

    after = kv.snapshot(session.cache)  # the live cache is as it was
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(before, after, strict=True)
    )
    memory.close_all()


def test_recent_recall_is_the_window_alone(tiny_backbone, clip, tmp_path):
    memory = memory_manager(tiny_backbone, tmp_path)
    session, stream_memory = tiered_session(tiny_backbone, clip, memory, limited_positions=True)
    recall = stream_memory.recall("recent")
    assert max_difference(session, recall, tiny_backbone, clip, []) <= 1e-4
    assert recall.spans == [] and recall.tokens == 0
    memory.close_all()


def test_auto_recall_takes_the_best_chunks_within_the_token_limit_and_matches_the_oracle(
    tiny_backbone, clip, tmp_path
):
    encoded, keeps, drops, _ = clip
    lengths = [chunk_length(*args) for args in zip(encoded, keeps, drops, strict=True)]
    limit = lengths[0] + lengths[1] + 1
    memory = memory_manager(tiny_backbone, tmp_path, recall_tokens=limit, host_bytes=0)
    session, stream_memory = tiered_session(tiny_backbone, clip, memory, limited_positions=True)
    recall = stream_memory.recall("auto")
    streamed = session.question_logits(QUESTION, recall=recall)
    recalled = [i for span in recall.spans for i in range(int(span.from_s / 2), int(span.to_s / 2))]
    assert recalled and recall.tokens == sum(lengths[i] for i in recalled) <= limit
    reference = oracle_logits(tiny_backbone, clip, recalled)
    assert (streamed - reference[-streamed.shape[0] :]).abs().max().item() <= 1e-4
    memory.close_all()


def test_a_chunk_reloaded_at_a_wrong_rotation_breaks_parity(tiny_backbone, clip, tmp_path, monkeypatch):
    """The oracle is sharp: one recalled chunk one temporal step off shows up."""
    memory = memory_manager(tiny_backbone, tmp_path)
    session, stream_memory = tiered_session(tiny_backbone, clip, memory, limited_positions=True)
    reload = stream_memory.reload

    def one_off(place, offset):
        return reload(place, offset + (1 if place.index == 2 else 0))

    monkeypatch.setattr(stream_memory, "reload", one_off)
    recall = stream_memory.recall(SpanRecall(2.0, 8.0))
    assert max_difference(session, recall, tiny_backbone, clip, [1, 2, 3]) > 1e-4
    memory.close_all()


def test_an_answer_with_recall_leaves_the_live_cache_as_it_was_and_close_deletes_the_files(
    tiny_backbone, clip, tmp_path
):
    memory = memory_manager(tiny_backbone, tmp_path, host_bytes=0)
    session, stream_memory = tiered_session(tiny_backbone, clip, memory, limited_positions=True)
    before = kv.snapshot(session.cache)
    params = SamplingParams(max_new_tokens=4)
    recall = stream_memory.recall(SpanRecall(-14.0, None))  # the last 14 s: chunks 1..6, less the window
    deltas = session.ask(QUESTION, params, recall=recall)
    next(deltas, None)
    deltas.close()  # cancelled mid-answer: the finally still cuts recall and question off
    assert unchanged(before, session)
    recalled = [(s.from_s, s.to_s) for s in recall.spans]
    _, final = windows(clip)
    assert recalled == [(2.0, 2.0 * final[0])]
    assert session.stats.last_answer.context_tokens == session.context_tokens + recall.tokens
    assert stream_memory.stats().recalls == 1 and stream_memory.stats().disk_bytes > 0
    folder = stream_memory.store.folder
    assert any(folder.iterdir())
    memory.close_all()
    assert not folder.exists() and not memory.folder.exists()
