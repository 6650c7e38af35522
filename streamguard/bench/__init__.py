"""`streamguard bench`: compression, costs, selection, question latency, memory, concurrency and
fidelity, measured side by side in one run (one module per figure family, `runner` ties them)."""

from __future__ import annotations

from streamguard.bench.runner import BenchOptions, run_bench

__all__ = ["BenchOptions", "run_bench"]
