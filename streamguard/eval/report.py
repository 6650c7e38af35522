"""What an eval run amounts to: accuracy, compression and KL per method, as JSON and tables."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

from rich.table import Table

from streamguard.engine.replay import pruned_pct
from streamguard.eval.datasets import EvalItem
from streamguard.eval.results import latest


def summarize(
    records: list[dict[str, Any]], items: Sequence[EvalItem], methods: Sequence[str]
) -> dict[str, Any]:
    """Per method over `items`: accuracy overall and per task, token-weighted compression, mean
    first-token KL vs full tokens, and the questions that failed (with why)."""
    by_pair = latest(records)
    summary: dict[str, Any] = {"questions": len(items), "methods": {}}
    for method in methods:
        lines = [by_pair[(item.id, method)] for item in items if (item.id, method) in by_pair]
        scored = [r for r in lines if not r.get("error")]
        failed = [r for r in lines if r.get("error")]
        summary["methods"][method] = {
            "scored": len(scored),
            "errors": len(failed),
            "not_run": len(items) - len(lines),
            **_accuracy(scored),
            "per_task": _per_task(scored),
            "video_tokens_pruned_pct": _weighted_pruned(scored, "video_tokens_in", "video_tokens_kept"),
            "input_tokens_pruned_pct": _weighted_pruned(scored, "input_tokens", "input_tokens_kept"),
            "kl_vs_full_mean": fmean(r["kl_vs_full"] for r in scored) if scored else None,
            "failed": [{"id": r["id"], "error": r["error"]} for r in failed],
        }
    return summary


def _accuracy(scored: list[dict[str, Any]]) -> dict[str, Any]:
    correct = sum(bool(r["correct"]) for r in scored)
    return {"correct": correct, "accuracy": correct / len(scored) if scored else None}


def _per_task(scored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    tasks: dict[str, list[dict[str, Any]]] = {}
    for r in scored:
        tasks.setdefault(r["task"] or "(none)", []).append(r)
    return {task: {"scored": len(rows), **_accuracy(rows)} for task, rows in sorted(tasks.items())}


def _weighted_pruned(scored: list[dict[str, Any]], total: str, kept: str) -> float | None:
    # Token-weighted over the questions' streams: long videos count for what they hold.
    if not scored:
        return None
    return pruned_pct(sum(r[kept] for r in scored), sum(r[total] for r in scored))


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"eval: {summary['questions']} questions")
    table.add_column("method", no_wrap=True)
    for name in ("scored", "errors", "accuracy", "video pruned", "input pruned", "KL vs full"):
        table.add_column(name, justify="right")
    for method, m in summary["methods"].items():
        table.add_row(
            method,
            str(m["scored"]),
            str(m["errors"]),
            _percent(None if m["accuracy"] is None else 100 * m["accuracy"]),
            _percent(m["video_tokens_pruned_pct"]),
            _percent(m["input_tokens_pruned_pct"]),
            "-" if m["kl_vs_full_mean"] is None else f"{m['kl_vs_full_mean']:.4f}",
        )
    return table


def task_table(summary: dict[str, Any]) -> Table | None:
    """Accuracy per task (rows) and method (columns); None when the set names no tasks."""
    methods = summary["methods"]
    tasks = sorted({task for m in methods.values() for task in m["per_task"]})
    if tasks in ([], ["(none)"]):
        return None
    table = Table(title="accuracy per task")
    table.add_column("task")
    for method in methods:
        table.add_column(method, justify="right")
    for task in tasks:
        cells = []
        for m in methods.values():
            row = m["per_task"].get(task)
            cells.append("-" if row is None else f"{_percent(100 * row['accuracy'])} of {row['scored']}")
        table.add_row(task, *cells)
    return table


def failure_lines(summary: dict[str, Any], limit: int = 5) -> list[str]:
    """`id: reason` for the first `limit` questions that failed (under any method)."""
    reasons = {f["id"]: f["error"] for m in summary["methods"].values() for f in m["failed"]}
    lines = [f"{qid}: {reason}" for qid, reason in list(reasons.items())[:limit]]
    if len(reasons) > limit:
        lines.append(f"... and {len(reasons) - limit} more (summary.json lists them all)")
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"
