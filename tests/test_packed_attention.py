"""The packed attention (streamguard.backbones.packed_attention) against transformers' own sdpa
attention called once per segment, the loop the towers run without a flash implementation.
The towers' outputs with it are checked in test_batching.py."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from streamguard.backbones.packed_attention import PACKED_SDPA, packed_sdpa_attention


class Tower(torch.nn.Module):
    """What the attention functions read off the calling module."""

    is_causal = False
    num_key_value_groups = 1


def packed_inputs(lengths: list[int], heads: int = 4, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, 1, heads, sum(lengths), dim, generator=generator)
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return q, k, v, cu


def one_call_per_segment(q, k, v, cu) -> torch.Tensor:
    """transformers' loop (modeling_qwen2_5_omni's attention without flash): (total, heads, d)."""
    lengths = (cu[1:] - cu[:-1]).tolist()
    outputs = [
        sdpa_attention_forward(Tower().eval(), *parts, attention_mask=None, scaling=q.shape[-1] ** -0.5)[0]
        for parts in zip(*(t.split(lengths, dim=2) for t in (q, k, v)), strict=True)
    ]
    return torch.cat(outputs, dim=1)[0]


def packed(q, k, v, cu) -> torch.Tensor:
    longest = int((cu[1:] - cu[:-1]).max())
    out, _ = packed_sdpa_attention(
        Tower().eval(),
        q,
        k,
        v,
        attention_mask=None,
        scaling=q.shape[-1] ** -0.5,
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=longest,
        max_length_k=longest,
    )
    assert out.shape == (1, q.shape[2], q.shape[1], q.shape[3])
    return out[0]


@pytest.mark.parametrize(
    "lengths",
    [[16] * 12, [16, 16, 8, 8, 16, 4, 1, 16], [100, 75, 100, 100, 30]],
    ids=["equal windows", "unequal windows", "audio chunks"],
)
def test_one_sdpa_call_equals_one_call_per_segment(lengths):
    q, k, v, cu = packed_inputs(lengths)
    torch.testing.assert_close(packed(q, k, v, cu), one_call_per_segment(q, k, v, cu), rtol=0, atol=1e-5)


def test_segments_attended_together_are_far_outside_the_tolerance():
    """The comparison catches mixing: the same tokens as one segment (every window seeing the
    others, what a wrong mask does) miss the per-window answer by far more than 1e-5."""
    q, k, v, cu = packed_inputs([16, 16, 8, 8, 16])
    mixed = packed(q, k, v, torch.tensor([0, int(cu[-1])], dtype=torch.int32))
    assert (mixed - one_call_per_segment(q, k, v, cu)).abs().max() > 1e-2


def test_only_the_towers_packed_bidirectional_call_is_served():
    q, k, v, cu = packed_inputs([4, 4])
    with pytest.raises(ValueError, match=PACKED_SDPA):
        packed_sdpa_attention(Tower(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, is_causal=True)
    with pytest.raises(ValueError, match="must match"):
        packed_sdpa_attention(Tower(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu.flip(0))
