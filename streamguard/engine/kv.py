"""Span edits on a transformers `DynamicCache`: cut back, cut out, measure.

The stream session owns the layout (which token range is which chunk); these functions only move
tensors, the same way on every layer.
"""

from __future__ import annotations

from typing import Any

import torch


def cache_length(cache: Any) -> int:
    return int(cache.get_seq_length())


def truncate(cache: Any, length: int) -> None:
    """Keep the first `length` tokens of every layer (a question's tokens are cut this way)."""
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.shape[-2] > length:
            # clone, so the cut-off tail's storage is freed rather than kept alive by a view
            layer.keys = layer.keys[..., :length, :].clone()
            layer.values = layer.values[..., :length, :].clone()


def remove_span(cache: Any, start: int, end: int) -> None:
    """Drop tokens [start, end) of every layer (an evicted chunk)."""
    if end <= start:
        return
    for layer in cache.layers:
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)


def overwrite_head(cache: Any, head: Any) -> None:
    """Replace every layer's first tokens with `head`'s (a cache of those tokens alone)."""
    for layer, fresh in zip(cache.layers, head.layers, strict=True):
        length = fresh.keys.shape[-2]
        layer.keys = torch.cat([fresh.keys, layer.keys[..., length:, :]], dim=-2)
        layer.values = torch.cat([fresh.values, layer.values[..., length:, :]], dim=-2)


def cache_bytes(cache: Any) -> int:
    return sum(
        layer.keys.nbytes + layer.values.nbytes
        for layer in cache.layers
        if getattr(layer, "keys", None) is not None
    )


def snapshot(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of every layer's keys and values (tests and debugging)."""
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def copy_span(
    cache: Any, start: int, end: int, device: torch.device | str = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of tokens [start, end) of every layer's keys and values, moved to `device`."""
    return [
        (
            layer.keys[..., start:end, :].to(device, copy=True),
            layer.values[..., start:end, :].to(device, copy=True),
        )
        for layer in cache.layers
    ]


def append_span(cache: Any, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put one span's keys and values (as `copy_span` gives them) after every layer's tokens."""
    for layer, (keys, values) in zip(cache.layers, layers, strict=True):
        layer.keys = torch.cat([layer.keys, keys.to(layer.keys.device, layer.keys.dtype)], dim=-2)
        layer.values = torch.cat([layer.values, values.to(layer.values.device, layer.values.dtype)], dim=-2)
