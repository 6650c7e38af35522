"""Warnings a stream can repeat without end (a camera whose clock flips back and forth, a
consumer that stays behind), let through at most once per interval.

Each stream's source or chunker holds its own `RepeatedWarnings`, so one stream's flood hides
nothing of another's; what was held back is counted in the next line that goes through.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

DEFAULT_INTERVAL_S = 10.0


class RepeatedWarnings:
    """`warning(kind, msg, *args)` logs the first warning of a kind, then at most one per
    `interval_s`, each saying how many of its kind were held back since the last."""

    def __init__(
        self,
        log: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log = log
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}  # kind → when one was last logged
        self._held: Counter[str] = Counter()  # kind → how many held back since

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held[kind] += 1
            return
        held = self._held.pop(kind, 0)
        if held:
            msg += f" ({held} more in the last {now - last:.0f} s)"
        self._last[kind] = now
        self._log.warning(msg, *args)
