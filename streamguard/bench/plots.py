"""The bench's PNG plots (matplotlib, headless): question latency, memory, concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

MIB = 2**20


def plot_latency(latency: dict[str, Any], path: Path) -> Path:
    """Answer time vs stream length, rolling vs re-prefill, and their ratio."""
    fig, (times, ratios) = plt.subplots(1, 2, figsize=(11, 4))
    for method, rows in latency["methods"].items():
        measured = [r for r in rows if r["reprefill"] is not None]
        minutes = [r["minutes"] for r in measured]
        times.plot(
            minutes, [r["rolling"]["total_ms"] for r in measured], "o-", label=f"{method}: rolling session"
        )
        times.plot(
            minutes, [r["reprefill"]["total_ms"] for r in measured], "s--", label=f"{method}: re-prefill"
        )
        ratios.plot(minutes, [r["total_ratio"] for r in measured], "o-", label=method)
    times.set(xlabel="stream length (min)", ylabel="answer time (ms)", yscale="log", title="Question latency")
    ratios.set(
        xlabel="stream length (min)", ylabel="re-prefill / rolling", title="Speed-up of the rolling cache"
    )
    ratios.axhline(1.0, color="grey", linewidth=0.8)
    for axis in (times, ratios):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _save(fig, path)


def plot_memory(memory: dict[str, Any], path: Path) -> Path:
    """KV cache and process RSS over the long replay, per method, with the budget's level."""
    fig, (kv, rss) = plt.subplots(1, 2, figsize=(11, 4))
    for method, entry in memory["methods"].items():
        series = entry["series"]
        minutes = [s / 60 for s in series["stream_s"]]
        kv.plot(minutes, [b / MIB for b in series["kv_bytes"]], label=method)
        rss.plot(minutes, [b / MIB for b in series["rss_bytes"]], label=method)
    ceiling = max(entry["summary"]["kv_bytes_ceiling"] for entry in memory["methods"].values())
    kv.axhline(ceiling / MIB, color="red", linestyle="--", linewidth=0.8, label="token budget")
    peak_rss = max(max(entry["series"]["rss_bytes"]) for entry in memory["methods"].values())
    rss.set_ylim(0, 1.15 * peak_rss / MIB)  # from zero, so a flat line looks flat
    kv.set(xlabel="stream time (min)", ylabel="KV cache (MiB)", title="KV cache per stream (rolling budget)")
    rss.set(xlabel="stream time (min)", ylabel="process RSS (MiB)", title="Process memory")
    for axis in (kv, rss):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _save(fig, path)


def plot_concurrency(concurrency: dict[str, Any], path: Path) -> Path:
    """Worker load, shed rate and answer latency against the number of streams, per engine."""
    fig, (load, shed, latency) = plt.subplots(1, 3, figsize=(13, 4))
    counts: set[int] = set()
    for name, figure in concurrency["engines"].items():
        rows = figure["rows"]
        streams = [r["streams"] for r in rows]
        counts.update(streams)
        load.plot(streams, [r["load"] for r in rows], "o-", label=name)
        shed.plot(streams, [100 * r["shed_rate"] for r in rows], "o-", label=name)
        latency.plot(streams, [r["question_total"]["p95_ms"] for r in rows], "o-", label=f"{name} total")
        latency.plot(
            streams, [r["question_first_delta"]["p95_ms"] for r in rows], "s--", label=f"{name} first"
        )
    load.axhline(1.0, color="red", linewidth=0.8, label="real-time limit")
    load.set(xlabel="streams", ylabel="worker load", title="Load (chunks and answers)")
    shed.set(xlabel="streams", ylabel="chunks shed (%)", title="Shed rate")
    latency.set(xlabel="streams", ylabel="ms (p95)", title="Answer latency under load")
    for axis in (load, shed, latency):
        axis.grid(alpha=0.3)
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted(counts), [str(c) for c in sorted(counts)])
        axis.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
