"""What a question may ask to recall, parsed and checked (no torch: the protocol imports it).

- "recent": the device window only (what a stream without memory answers over);
- "auto": the offloaded chunks that best match the question, within `memory.recall_tokens`;
- {"from": T0, "to": T1}: exactly the chunks that overlap that span, either in stream seconds
  (0 is the stream's start; negative counts back from now; `to` left out means now) or in
  wall-clock ISO 8601 times with a timezone ("2026-12-02T14:32:00Z"), within
  `memory.span_tokens`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

RecallMode = Literal["auto", "recent"]


class RecallError(ValueError):
    """A recall the stream cannot serve; `code` is the client's error code."""

    code = "invalid_recall"


class InvalidRecallError(RecallError):
    """A recall value that is not one of the documented forms."""


class MemoryDisabledError(RecallError):
    code = "memory_disabled"


class RecallTooLargeError(RecallError):
    code = "recall_too_large"


@dataclass(frozen=True)
class SpanRecall:
    """A span in stream seconds (floats; `end` None: now) or wall-clock times (aware datetimes)."""

    start: float | datetime
    end: float | datetime | None

    @property
    def wall_clock(self) -> bool:
        return isinstance(self.start, datetime)


RecallSpec = RecallMode | SpanRecall


@dataclass(frozen=True)
class RecalledSpan:
    """A run of consecutive recalled chunks: stream seconds, and wall-clock times (UTC)."""

    from_s: float
    to_s: float
    from_wall: datetime
    to_wall: datetime
    chunks: int
    tokens: int


def parse_recall(value: object) -> RecallSpec:
    """A client's `recall` value as a spec; `InvalidRecallError` says what is wrong with it."""
    if value in ("auto", "recent"):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        raise InvalidRecallError(
            f'recall must be "auto", "recent" or {{"from": T0, "to": T1}}; got {value!r}'
        )
    if not isinstance(value, dict):
        raise InvalidRecallError(f"recall must be a string or an object; got {type(value).__name__}")
    unknown = set(value) - {"from", "to"}
    if unknown:
        raise InvalidRecallError(f"a recall span has only 'from' and 'to'; got {', '.join(sorted(unknown))}")
    if "from" not in value:
        raise InvalidRecallError("a recall span needs 'from'")
    start = _time(value["from"], "from")
    end = None if value.get("to") is None else _time(value["to"], "to")
    if end is not None and isinstance(start, datetime) != isinstance(end, datetime):
        raise InvalidRecallError(
            "a recall span's 'from' and 'to' must both be stream seconds or both ISO times"
        )
    if isinstance(start, datetime) and end is None:
        raise InvalidRecallError("a wall-clock recall span needs 'to' as well")
    if end is not None and _ordered(start, end) is False:
        raise InvalidRecallError(
            f"a recall span must end after it starts; got from {value['from']!r} to {value['to']!r} "
            "(negative seconds count back from now; leave 'to' out to mean now)"
        )
    return SpanRecall(start, end)


def _time(raw: object, name: str) -> float | datetime:
    if isinstance(raw, bool):
        raise InvalidRecallError(f"recall '{name}' must be seconds or an ISO time; got {raw!r}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise InvalidRecallError(f"recall '{name}' must be a finite number of seconds; got {raw!r}")
        return float(raw)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidRecallError(f"recall '{name}' is not an ISO 8601 time: {raw!r}") from None
        if parsed.tzinfo is None:
            raise InvalidRecallError(f"recall '{name}' needs a timezone (e.g. a trailing Z): {raw!r}")
        return parsed
    raise InvalidRecallError(f"recall '{name}' must be seconds or an ISO time; got {type(raw).__name__}")


def _ordered(start: float | datetime, end: float | datetime) -> bool | None:
    """Whether start < end; None when it depends on "now" (one negative, one not)."""
    if isinstance(start, datetime) and isinstance(end, datetime):
        return start < end
    if (start < 0) != (end < 0):  # type: ignore[operator]
        return None
    return start < end  # type: ignore[operator]


def describe(spec: RecallSpec) -> str:
    if isinstance(spec, str):
        return spec
    return f"span {spec.start}..{'now' if spec.end is None else spec.end}"
