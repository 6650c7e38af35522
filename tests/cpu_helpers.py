"""Running torch in tests on a shared CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread inside the block. The tiny model's tensors gain nothing from a second
    thread, and on a busy shared CPU its spin-waits cost an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
