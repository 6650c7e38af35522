"""`streamguard bench`: compression, costs, selection, question latency, memory, concurrency,
fidelity, the pre-filter and long memory, measured side by side in one run (one module per figure
family, `sections` their table, `runner` ties them)."""

from __future__ import annotations

from typing import Any

__all__ = ["BenchOptions", "run_bench"]


def __getattr__(name: str) -> Any:
    # The runner on first use: the CLI's parser reads `sections` without importing torch.
    if name in __all__:
        from streamguard.bench import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
