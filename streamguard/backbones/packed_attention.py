"""Packed ("varlen") attention for the encoder towers on plain torch SDPA.

Why: the vision towers of Qwen2.5-Omni, Qwen3-Omni and Qwen2.5-VL (video-SALMONN 2+), and the
Qwen-Omni audio towers, attend within segments of one packed sequence (windows of 4×4 merged
patches, frames, audio chunks) marked by `cu_seqlens`. transformers runs that as one varlen call
only for flash-attn; every other implementation gets a Python loop of one attention call per
segment, per layer (a 720p chunk is hundreds of windows), and batching several streams into one
tower call only lengthens the loop. Here the segments are gathered into a padded batch, one SDPA
call attends all of them (a key-padding mask when lengths differ), and the result is scattered
back: the same arithmetic per segment, without the loop, on CPU and on GPUs without flash-attn.

It is not selected through `from_pretrained`: a name containing "flash" makes transformers try
to import a flash kernel for it (from the `kernels` hub when it is not flash-attn's own). The
towers load with sdpa and `use_packed_attention` then switches their configs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

PACKED = "packed_sdpa"  # its name in the settings (`model.vision_attn_implementation`)
# Its name in transformers. The towers pick their packed path with `is_flash_attention_requested`,
# which only asks whether "flash" is in the implementation's name: the name must contain it for
# transformers to hand this function `cu_seq_lens_q/k` instead of looping. No digit and no "/",
# so neither the "flash_attention_N" checks nor the hub-kernel pattern match it.
PACKED_SDPA = "flash_varlen_on_sdpa"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    is_causal: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Bidirectional attention within each segment of a packed (1, heads, total, d) sequence;
    returns (1, total, heads, d) as transformers' flash varlen interface does."""
    if cu_seq_lens_q is None or attention_mask is not None or is_causal:
        raise ValueError(f"{PACKED_SDPA} serves the encoder towers' packed bidirectional calls only")
    if cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_k, cu_seq_lens_q):
        raise ValueError(f"{PACKED_SDPA} attends each segment to itself: cu_seq_lens_q and _k must match")
    _, heads, total, dim = query.shape
    cu = cu_seq_lens_q.to(query.device, torch.long)
    count = cu.numel() - 1
    longest = max_length_q if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
    if count * longest == total:  # every segment the same length: a view, no mask
        q, k, v = (t[0].unflatten(1, (count, longest)).transpose(0, 1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
        return out.permute(0, 2, 1, 3).reshape(1, total, heads, dim), None
    steps = torch.arange(longest, device=query.device)
    valid = steps < (cu[1:] - cu[:-1]).unsqueeze(1)  # (segments, longest)
    index = torch.where(valid, cu[:-1].unsqueeze(1) + steps, 0)
    q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))  # (segments, heads, longest, d)
    # Padded keys are masked out; padded queries attend to their segment's keys and are dropped.
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=valid[:, None, None, :], dropout_p=dropout, scale=scaling
    )
    return out.permute(0, 2, 1, 3)[valid].unsqueeze(0), None  # segments in order, each in order


def register_packed_attention() -> None:
    """Make `PACKED_SDPA` a valid attention implementation (once: what is registered under the
    name stays)."""
    from transformers import AttentionInterface

    if PACKED_SDPA not in AttentionInterface():
        AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def use_packed_attention(*tower_configs: Any) -> None:
    """Switch loaded towers (vision, audio), by their configs, to the packed attention. Only
    their own configs change: the language model keeps its implementation. Set on the config
    directly because `set_attn_implementation` would look for a flash kernel behind the name."""
    register_packed_attention()
    for config in tower_configs:
        config._attn_implementation = PACKED_SDPA
