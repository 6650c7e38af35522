"""The bench's sections: the one table the CLI's `--sections`, the runner and the report read.

Kept free of torch so that building the CLI's parser stays quick."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """One part of the bench a user can choose: what it measures, and the bench.json keys it writes."""

    name: str
    measures: str
    keys: tuple[str, ...]


# In the order they run: the long replays before selection, whose 7B-width predictor would otherwise
# stay in the RSS they report.
SECTIONS: tuple[Section, ...] = (
    Section(
        "compression",
        "compression per method on every clip, and first-token fidelity",
        ("compression", "fidelity"),
    ),
    Section(
        "costs", "long replays: each stage's cost full vs pruned, and KV and RSS memory", ("costs", "memory")
    ),
    Section("latency", "question latency, rolling cache vs re-prefilling the context", ("latency",)),
    Section("selection", "selection's cost at Qwen2.5-Omni-7B width", ("selection",)),
    Section("prefilter", "the pixel pre-filter on generated camera clips", ("prefilter",)),
    Section(
        "concurrency", "N concurrent streams through the serial and the batched engine", ("concurrency",)
    ),
    Section(
        "long_memory",
        "a long stream: a bounded device cache, recall from host memory and disk",
        ("long_memory",),
    ),
)
SECTION_NAMES: tuple[str, ...] = tuple(s.name for s in SECTIONS)


def chosen_sections(names: Iterable[str]) -> tuple[str, ...]:
    """`names` in the table's (running) order, each once; ValueError naming the valid ones for any other."""
    wanted = set(names)
    unknown = sorted(wanted - set(SECTION_NAMES))
    if unknown:
        raise ValueError(f"unknown section {', '.join(unknown)}; valid: {', '.join(SECTION_NAMES)}")
    if not wanted:
        raise ValueError(f"no section chosen; valid: {', '.join(SECTION_NAMES)}")
    return tuple(name for name in SECTION_NAMES if name in wanted)


def sections_help() -> str:
    """`--sections`' help: every name and what it measures."""
    return "comma-separated sections to run (default: all): " + "; ".join(
        f"{s.name} ({s.measures})" for s in SECTIONS
    )
