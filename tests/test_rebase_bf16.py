"""Re-basing in bf16 stays exact where it accumulates: the prompt prefix, re-based with every shift
of a stream's life, is what a fresh prefill at the shifted positions gives after 100 re-bases; a
chunk's keys are rotated once per re-base in float32 and rounded once.

The oracle is the thinker's own prefill at the shifted positions (for the prefix) and a float64
rotation of the same keys (for a rotation). In bf16 a chunk's keys cannot match a fresh prefill to
1e-3 even after one ideal rotation: the prefill's own bf16 rotary arithmetic at the other position
differs by ~4e-3 on the tiny model, so the chunk's check is against the exact rotation instead.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cpu_helpers import one_torch_thread
from parity_helpers import SYSTEM

from streamguard.backbones import load_backbone
from streamguard.config import SessionSettings, load_settings
from streamguard.engine.session import StreamSession


@pytest.fixture(scope="module")
def bf16_backbone(checkpoint):
    settings = load_settings("tiny", model={"path": str(checkpoint), "dtype": "bfloat16"})
    with one_torch_thread():
        yield load_backbone(settings.model, settings.chunk)


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()


def test_a_hundred_rebases_in_bf16_leave_the_prefix_as_a_fresh_prefill_gives_it(bf16_backbone):
    backbone = bf16_backbone
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (84, 112, 3), dtype=np.uint8) for _ in range(4)]
    audio = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    session = StreamSession(backbone, SessionSettings(), SYSTEM)
    session.append_chunk(backbone.encode(backbone.preprocess(frames, audio)))
    for step in range(100):
        session.rebase(300 + 50 * (step % 7))  # ~46000 positions in all, past the model's range
    assert session.stats.rebases == 100

    fresh = backbone.new_cache()
    positions, _ = backbone.prefix_positions(session.prefix_length)
    shifted = positions - session.position_offset
    backbone.forward(backbone.embed_tokens(session.layout.prefix), shifted, fresh, logits="none")
    prefix = session.prefix_length
    for layer, expected in zip(session.cache.layers, fresh.layers, strict=True):
        assert relative(layer.keys[..., :prefix, :], expected.keys) <= 1e-3
        assert relative(layer.values[..., :prefix, :], expected.values) <= 1e-3
    assert session.cache_tokens == prefix + session.chunks[0].length  # the chunk is still there


@pytest.mark.parametrize("delta", [50, 30000])
def test_a_rotation_of_bf16_keys_is_the_exact_rotation_rounded_once(bf16_backbone, delta):
    backbone = bf16_backbone
    keys = torch.randn(1, 2, 500, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    holder = SimpleNamespace(layers=[SimpleNamespace(keys=keys.clone())])
    backbone.rotate_cache(holder, delta)

    angles = -delta * backbone._rotary.inv_freq.double()
    cos, sin = torch.cat([angles.cos()] * 2), torch.cat([angles.sin()] * 2)
    wide, half = keys.double(), keys.shape[-1] // 2
    exact = wide * cos + torch.cat((-wide[..., half:], wide[..., :half]), dim=-1) * sin
    # bf16 keeps 8 bits: a rounding is ~1.7e-3 of a key; rotating with bf16 cos/sin costs ~2.7e-3
    assert relative(holder.layers[0].keys, exact.bfloat16()) <= 2e-4
    assert holder.layers[0].keys.dtype == torch.bfloat16
