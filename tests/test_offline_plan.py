"""Offline ContextGuard (§2.3) laid into a session on the tiny real model: a merged group's averaged
tokens sit at its FIRST chunk's positions, its later chunks hold audio only, and the question
logits equal one offline forward of the thinker over that sequence.

The clip is A, B, B', B'', C: B' and B'' are B with a little noise (a camera on a still scene),
so the three share a segment and merge, and their average differs from each of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_helpers import QUESTION, SYSTEM, official_inputs, offline_logits

from streamguard.backbones.base import EncodedChunk
from streamguard.config import load_settings
from streamguard.engine.replay import append_offline_plan
from streamguard.engine.session import StreamSession
from streamguard.pruning.a2v import mean_audio_reference
from streamguard.pruning.temporal import offline_contextguard

AUDIO_TOKENS = 50


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(5)

    def picture() -> list[np.ndarray]:
        return [rng.integers(0, 256, (84, 112, 3), dtype=np.uint8) for _ in range(4)]

    def jittered(frames: list[np.ndarray]) -> list[np.ndarray]:
        noise = [rng.integers(-6, 7, frame.shape) for frame in frames]
        return [
            np.clip(f.astype(int) + n, 0, 255).astype(np.uint8) for f, n in zip(frames, noise, strict=True)
        ]

    a, b, c = picture(), picture(), picture()
    frames = [a, b, jittered(b), jittered(b), c]
    audio = [(rng.standard_normal(32000) * 0.1).astype(np.float32) for _ in frames]
    return frames, audio


@pytest.fixture(scope="module")
def encoded(backbone, clip):
    return [backbone.encode(backbone.preprocess(f, a)) for f, a in zip(*clip, strict=True)]


@pytest.fixture(scope="module")
def plan(encoded):
    return offline_contextguard(
        [c.video for c in encoded],
        [c.audio for c in encoded],
        [mean_audio_reference(c.audio) for c in encoded],
        rho_sem=0.5,
        rho_spa=0.1,
    )


def test_the_still_chunks_merge_into_one_group(plan, encoded):
    assert plan.segments == [(0, 5)]
    assert [group.chunks for group in plan.groups] == [(0,), (1, 2, 3), (4,)]
    # the jitter is real: the merged tokens are not any single chunk's
    merged = plan.groups[1]
    for t in merged.chunks:
        assert not torch.allclose(merged.video, encoded[t].video_flat[merged.indices])


def test_merged_groups_take_their_first_chunks_positions_with_offline_parity(backbone, clip, encoded, plan):
    settings = load_settings("tiny").session
    session = StreamSession(backbone, settings, SYSTEM)
    append_offline_plan(session, encoded, plan)

    kept = len(plan.groups[0].indices)
    start = session.prefix_length
    for cached, video_tokens in zip(session.chunks, [kept, kept, 0, 0, kept], strict=True):
        assert (cached.start, cached.video_tokens, cached.audio_tokens) == (start, video_tokens, AUDIO_TOKENS)
        start += cached.length

    # The oracle: the official sequence with each group's first chunk carrying the group's average
    # (computed here from the encoder outputs) and the rest of the group's video left out.
    averaged = []
    for t, chunk in enumerate(encoded):
        group = next(g for g in plan.groups if t in g.chunks)
        flat = chunk.video_flat.clone()
        flat[group.indices] = torch.stack([encoded[u].video_flat[group.indices] for u in group.chunks]).mean(
            0
        )
        averaged.append(EncodedChunk(video=flat.reshape(chunk.video.shape), audio=chunk.audio))
    keeps = [plan.groups[0].indices] * len(encoded)
    drops = [t not in (g.chunks[0] for g in plan.groups) for t in range(len(encoded))]
    offline = offline_logits(backbone, official_inputs(backbone, *clip), averaged, keeps, drops)
    streaming = session.question_logits(QUESTION)
    assert (streaming - offline[-streaming.shape[0] :]).abs().max().item() <= 1e-4
