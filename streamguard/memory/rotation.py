"""Moving stored keys to another position offset, exactly.

A chunk's keys carry the rotation of the offset the session had when they left the device
cache. Rotary attention only sees position differences and a uniform shift on all three axes is
one more rotation per frequency band, so the backbone's own `rotate_cache` moves them; it runs
here in float32 and the result is cast back once, so a reloaded chunk is what a prefill at the
current offset would have built (to float32 rounding).
"""

from __future__ import annotations

from types import SimpleNamespace

from streamguard.backbones.base import Backbone
from streamguard.memory.records import Layers


def rerotated(backbone: Backbone, layers: Layers, delta: int) -> Layers:
    """`layers` with every key moved from position p to p - delta (values untouched)."""
    if delta == 0:
        return layers
    holder = SimpleNamespace(layers=[SimpleNamespace(keys=keys.float()) for keys, _ in layers])
    backbone.rotate_cache(holder, delta)
    return [
        (moved.keys.to(keys.dtype), values)
        for moved, (keys, values) in zip(holder.layers, layers, strict=True)
    ]
