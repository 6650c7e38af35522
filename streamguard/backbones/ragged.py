"""Several streams' new tokens through a Qwen decoder in one forward: ragged batching.

Each stream has its own KV cache, of its own length, so the rows cannot be stacked into one
padded batch. Everything that works token by token (norms, projections, rotary positions, MLP,
LM head) runs once over all rows' tokens concatenated; attention alone runs row by row, each
row's queries against its own cache and its own new keys. Causality is aligned bottom-right: a
row's i-th new token sees its whole cache and its row's first i+1 new tokens (PyTorch SDPA's
`is_causal` aligns top-left when queries and keys differ in length, hence the explicit mask).

The layers' own modules and the model's own rotary function do the work, so a row comes out as
the transformers forward of that row alone would give it. This is the CPU reference; a GPU
kernel over paged caches (FlashInfer, flash-attn varlen) would replace the per-row loop.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class RaggedRow:
    """One stream's new tokens: (n, d) embeds at (3, n) positions, appended to `cache`."""

    embeds: torch.Tensor
    positions: torch.Tensor
    cache: Any


def ragged_forward(language_model: Any, lm_head: Any, rows: Sequence[RaggedRow]) -> list[torch.Tensor]:
    """Append every row to its cache in one pass over the layers; the last token's logits of
    each row, (vocab,) in float32."""
    if len({id(row.cache) for row in rows}) != len(rows):
        raise ValueError("each row of a ragged batch needs a cache of its own")
    parameter = next(language_model.parameters())
    lengths = [int(row.embeds.shape[0]) for row in rows]
    hidden = torch.cat([row.embeds for row in rows]).to(parameter.device, parameter.dtype)[None]
    positions = torch.cat([row.positions for row in rows], dim=1)[:, None, :].to(parameter.device)
    rotary = language_model.rotary_emb(hidden, positions)
    caches = [row.cache for row in rows]
    for layer in language_model.layers:
        attended = _attention(layer.self_attn, layer.input_layernorm(hidden), rotary, caches, lengths)
        hidden = hidden + attended
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    hidden = language_model.norm(hidden)[0]
    last = torch.tensor(lengths).cumsum(0) - 1
    return list(lm_head(hidden[last.to(hidden.device)]).float())


def _attention(
    attention: Any,
    hidden: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    caches: Sequence[Any],
    lengths: Sequence[int],
) -> torch.Tensor:
    """The layer's self-attention over (1, N, d) concatenated rows, each against its own cache."""
    if attention.sliding_window is not None:
        raise NotImplementedError("ragged batching covers full attention only (no sliding window)")
    total = hidden.shape[1]
    shape = (1, total, -1, attention.head_dim)
    queries, keys = attention.q_proj(hidden).view(shape), attention.k_proj(hidden).view(shape)
    if hasattr(attention, "q_norm"):  # Qwen3: each head's queries and keys RMS-normed first
        queries, keys = attention.q_norm(queries), attention.k_norm(keys)
    queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)
    values = attention.v_proj(hidden).view(shape).transpose(1, 2)
    apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb  # the model's own
    queries, keys = apply_rotary(queries, keys, *rotary)
    outputs = []
    start = 0
    for cache, length in zip(caches, lengths, strict=True):
        end = start + length
        row_keys, row_values = cache.update(
            keys[:, :, start:end], values[:, :, start:end], attention.layer_idx
        )
        outputs.append(
            F.scaled_dot_product_attention(
                queries[:, :, start:end],
                row_keys,
                row_values,
                attn_mask=_bottom_right_causal(length, row_keys.shape[-2], hidden.device),
                scale=attention.scaling,
                enable_gqa=True,
            )
        )
        start = end
    attended = torch.cat(outputs, dim=2).transpose(1, 2).reshape(1, total, -1)
    return attention.o_proj(attended)


def _bottom_right_causal(queries: int, keys: int, device: torch.device) -> torch.Tensor | None:
    """Query i (of the last `queries` positions) sees keys 0 .. keys - queries + i; None for one
    query, which sees everything."""
    if queries == 1:
        return None
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)
