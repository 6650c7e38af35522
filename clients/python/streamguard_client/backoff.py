"""How long to wait before trying the service again: exponential backoff with jitter."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits of `initial_s`, then `factor` times longer each try, at most `max_s`, each shortened
    by up to `jitter` of itself (so many clients dropped at once do not come back in step).
    `attempts` caps the tries (None: keep trying)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    jitter: float = 0.2
    attempts: int | None = 6

    def delays(self) -> Iterator[float]:
        """The wait before each retry, as many as `attempts` allows."""
        delay, tried = self.initial_s, 0
        while self.attempts is None or tried < self.attempts:
            yield delay * (1 - self.jitter * random.random())
            delay, tried = min(self.max_s, delay * self.factor), tried + 1
