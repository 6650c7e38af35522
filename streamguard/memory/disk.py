"""One chunk's KV as one safetensors file: written whole under a temporary name and renamed into
place, so a reader never sees half a file; read back memory-mapped."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from streamguard.memory.records import Layers

TMP_SUFFIX = ".tmp"


def write_chunk(path: Path, layers: Layers) -> int:
    """Write `layers` to `path` atomically (temporary file, fsync, rename); return its size."""
    tensors = {}
    for i, (keys, values) in enumerate(layers):
        tensors[f"k{i}"] = keys.contiguous()
        tensors[f"v{i}"] = values.contiguous()
    tmp = path.with_name(path.name + TMP_SUFFIX)
    save_file(tensors, str(tmp))
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def read_chunk(path: Path) -> Layers:
    """The layers `write_chunk` wrote, through a memory map of the file."""
    with safe_open(str(path), framework="pt") as handle:
        count = sum(1 for name in handle.keys() if name.startswith("k"))  # noqa: SIM118 (not a dict)
        return [(handle.get_tensor(f"k{i}"), handle.get_tensor(f"v{i}")) for i in range(count)]
