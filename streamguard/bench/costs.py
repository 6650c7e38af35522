"""Figure 2: where a chunk's time goes (the pipeline's own stage timings), full vs pruned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamguard.bench.workload import distribution_ms
from streamguard.engine.pipeline import STAGES, ChunkReport


def cost_breakdown(reports: Sequence[ChunkReport]) -> dict[str, Any]:
    """Median and p95 per stage and per chunk, and each stage's share of the summed compute."""
    per_stage = {stage: [r.timings_ms.get(stage, 0.0) / 1000 for r in reports] for stage in STAGES}
    totals = [sum(r.timings_ms.get(stage, 0.0) for stage in STAGES) / 1000 for r in reports]
    grand_total = sum(totals)
    return {
        "chunks": len(reports),
        "stages": {stage: distribution_ms(seconds) for stage, seconds in per_stage.items()},
        "chunk_total": distribution_ms(totals),
        "share_pct": {
            stage: 100 * sum(seconds) / grand_total if grand_total else 0.0
            for stage, seconds in per_stage.items()
        },
    }


def compare_costs(full: Sequence[ChunkReport], pruned: Sequence[ChunkReport]) -> dict[str, Any]:
    """Both breakdowns, selection's share of the pruned chunk's compute, and the prefill saved."""
    full_costs, pruned_costs = cost_breakdown(full), cost_breakdown(pruned)
    full_prefill = full_costs["stages"]["prefill"]["median_ms"]
    pruned_prefill = pruned_costs["stages"]["prefill"]["median_ms"]
    return {
        "full": full_costs,
        "pruned": pruned_costs,
        "selection_share_pct": pruned_costs["share_pct"]["select"],
        "prefill_median_ratio": pruned_prefill / full_prefill if full_prefill else None,
    }
