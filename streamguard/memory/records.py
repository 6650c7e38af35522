"""What memory keeps of one evicted chunk: where it sat in the stream and its KV."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per decoder layer, (1, heads, n, d)


@dataclass(frozen=True)
class ChunkPlace:
    """An offloaded chunk's place in the stream and the rotation its keys carry."""

    index: int  # the chunk's number in the stream
    slot: int  # its position slot in the session
    stream_s: float  # stream seconds of its start
    seconds: float  # how long it lasts
    wall_end: float  # unix seconds it entered the cache (its end was captured just before)
    position_offset: int  # the session offset its keys were rotated at
    tokens: int

    @property
    def stream_end_s(self) -> float:
        return self.stream_s + self.seconds

    @property
    def wall_start(self) -> float:
        return self.wall_end - self.seconds


def layers_nbytes(layers: Layers) -> int:
    return sum(keys.nbytes + values.nbytes for keys, values in layers)
