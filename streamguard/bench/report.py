"""The bench's files: bench.json (every raw figure) and report.md (tables and the plots)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamguard.backbones.base import RANDOM_WEIGHTS_NOTE
from streamguard.bench.flops import __doc__ as FLOPS_FORMULA
from streamguard.bench.sections import SECTIONS

MIB = 2**20


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(_finite(result), indent=2) + "\n")
    return path


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_markdown(result: dict[str, Any], path: Path) -> Path:
    """The report: the opening notes and headline, then a part per bench.json key the run wrote."""
    env = result["environment"]
    ran = [s for s in SECTIONS if s.name in env["sections"]]
    parts = [
        "# StreamGuard bench\n",
        f"Model `{env['model']}` on {env['device']} ({env['device_name'] or 'unknown'}, {env['dtype']}), "
        f"config `{env['config_file']}`, commit `{env['git_commit']}`, {env['date']}, "
        f"{'quick' if env['quick'] else 'full'} run in {result['duration_s']:.0f} s.\n",
        ""
        if len(ran) == len(SECTIONS)
        else "Sections run (`--sections`): " + "; ".join(f"{s.name} ({s.measures})" for s in ran) + ".\n",
        "Absolute times only mean something on a GPU at real model size. On a CPU with the tiny "
        "random model read the ratios (re-prefill vs rolling, pruned vs full, selection's share), "
        "not the milliseconds.\n",
        f"**The model has {RANDOM_WEIGHTS_NOTE}** (`environment.random_weights`): the fidelity "
        "figures are noise too.\n"
        if env["random_weights"]
        else "",
        _headline(result),
        *(render(result) for key, render in _PARTS if key in result),
    ]
    path.write_text("\n".join(parts))
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _headline(result: dict[str, Any]) -> str:
    head = result["headline"]
    rows = [
        [f"input tokens pruned, {clip}", ", ".join(f"{m} {p:.1f}%" for m, p in methods.items())]
        for clip, methods in head.get("input_tokens_pruned_pct", {}).items()
    ]
    ratio = head.get("question_latency_ratio")
    if ratio is not None:
        rows.append(
            [
                f"question latency, re-prefill / rolling at {ratio['minutes']:g} min ({ratio['method']})",
                f"{ratio['total_ratio']:.1f}×",
            ]
        )
    if "kv_bytes_per_minute" in head:
        rows.append(
            [
                "KV cache per stream-minute (no budget)",
                ", ".join(f"{m} {b / MIB:.2f} MiB" for m, b in head["kv_bytes_per_minute"].items())
                + "; at Qwen2.5-Omni-7B bf16: "
                + ", ".join(
                    f"{m} {b / MIB:.0f} MiB" for m, b in head["kv_bytes_per_minute_at_7b_bf16"].items()
                ),
            ]
        )
    if "selection_share_pct" in head:
        share = head["selection_share_pct"]
        measured, scaled = share["loaded_model_measured"], share["7b_width_scaled"]
        rows.append(
            [
                "selection's share of chunk compute",
                ("" if measured is None else f"{measured:.1f}% measured on the loaded model; ")
                + f"at 7B width (grid {share['grid']}) "
                + ("" if scaled is None else f"{scaled:.2f}% (FLOP-scaled) to ")
                + f"{share['7b_width_at_matmul_throughput']:.2f}% (at matmul throughput)",
            ]
        )
    if "engine" in result:
        rows.append(["engines, batched vs serial", engine_line(result).removeprefix("engine: ")])
        rows.append(["CPU", cpu_line(result).removeprefix("cpu share of all cores ")])
    if "prefilter" in head:
        pre = head["prefilter"]
        rows.append(
            [
                "pre-filter, static noisy H.264 camera",
                f"{pre['static_encoder_skipped_pct']:.0f}% of chunks after the first skip the vision encoder; "
                + (
                    ""
                    if pre["vision_encode_ratio"] is None
                    else f"vision encoder time ×{pre['vision_encode_ratio']:.2f}; "
                )
                + (
                    "every event chunk kept its video"
                    if pre["events_kept"]
                    else "an event chunk LOST its video"
                ),
            ]
        )
    return "## Headline\n\n" + _table(["figure", "value"], rows)


def _compression(compression: dict[str, Any]) -> str:
    parts = ["## 1. Compression per method\n"]
    for clip, figure in compression.items():
        rows = [
            [
                method,
                e["video_tokens_in"],
                e["video_tokens_kept"],
                e["video_tokens_pruned_pct"],
                e["input_tokens_pruned_pct"],
                e["chunks_video_dropped"],
            ]
            for method, e in figure["methods"].items()
        ]
        note = f" (offline merging skipped: {figure['offline_skipped']})" if figure["offline_skipped"] else ""
        parts.append(f"**{clip}** — `{figure['file']}`, {figure['chunks']} chunks{note}\n")
        parts.append(
            _table(
                ["method", "video in", "video kept", "video pruned %", "input pruned %", "chunks w/o video"],
                rows,
            )
        )
    parts.append(
        "Random, high and mean-audio keep as many tokens as ContextGuard per chunk (matched ratio) and share "
        "its drop rule; they differ in which tokens, which the fidelity table shows.\n"
    )
    return "\n".join(parts)


def _costs(costs: dict[str, Any]) -> str:
    full, pruned = costs["full"], costs["pruned"]
    rows = []
    for stage in full["stages"]:
        f, p = full["stages"][stage], pruned["stages"][stage]
        rows.append(
            [stage, f["median_ms"], f["p95_ms"], p["median_ms"], p["p95_ms"], pruned["share_pct"][stage]]
        )
    f, p = full["chunk_total"], pruned["chunk_total"]
    rows.append(["whole chunk", f["median_ms"], f["p95_ms"], p["median_ms"], p["p95_ms"], 100.0])
    return (
        f"## 2. Per-chunk cost ({costs['methods']['full']} vs {costs['methods']['pruned']}, {pruned['chunks']} chunks each)\n\n"
        + _table(
            ["stage", "full median ms", "full p95 ms", "pruned median ms", "pruned p95 ms", "pruned share %"],
            rows,
        )
        + f"\nSelection takes {costs['selection_share_pct']:.1f}% of a pruned chunk's compute; the pruned "
        f"prefill's median is {_cell(costs['prefill_median_ratio'])}× the full one's.\n"
    )


def _selection(figure: dict[str, Any]) -> str:
    rows = [
        [
            "×".join(str(x) for x in r["grid"]),
            r["video_tokens"],
            r["kept_video_tokens"],
            f"{r['a2v']['median_ms']:.1f} / {r['a2v']['p95_ms']:.1f}",
            f"{r['mean_audio']['median_ms']:.2f} / {r['mean_audio']['p95_ms']:.2f}",
            (r["loaded_model_ms"] or {}).get("encode_prefill_ms"),
            r["encode_prefill_7b_ms_scaled"],
            r["selection_share_pct_scaled"],
            r["encode_prefill_7b_ms_at_matmul_throughput"],
            r["selection_share_pct_at_matmul_throughput"],
        ]
        for r in figure["rows"]
    ]
    return (
        f"## 3. Selection cost at Qwen2.5-Omni-7B width (d = {figure['width']}, {figure['audio_tokens']} audio "
        "tokens, random tensors)\n\n"
        + _table(
            [
                "grid F×H×W",
                "video tokens",
                "kept",
                "A2V select ms median / p95",
                "mean-audio select ms median / p95",
                "loaded model encode+prefill ms",
                "7B encode+prefill ms (FLOP-scaled)",
                "share %",
                f"7B encode+prefill ms (at {figure['matmul_tflops']:.3g} TFLOP/s)",
                "share %",
            ],
            rows,
        )
        + "\nThe A2V predictor has the default size (128 queries, 2 cross-attention layers) with random "
        "weights. FLOPs of one chunk, from the model configs:\n\n```\n" + FLOPS_FORMULA.strip() + "\n```\n"
    )


def _latency(latency: dict[str, Any], plot: str) -> str:
    rows = []
    for method, checkpoints in latency["methods"].items():
        for r in checkpoints:
            base = r["reprefill"] or {}
            rows.append(
                [
                    method,
                    r["minutes"],
                    r["rolling"]["context_tokens"],
                    r["rolling"]["first_delta_ms"],
                    r["rolling"]["total_ms"],
                    base.get("context_tokens"),
                    base.get("first_delta_ms"),
                    base.get("total_ms"),
                    r.get("total_ratio"),
                    r.get("total_ratio_of_medians"),
                ]
            )
    return (
        "## 4. Question latency: rolling session vs re-prefilling the context\n\n"
        f"Question “{latency['question']}” after each stream length ({latency['source']}, replayed faster than "
        f"real time). Baseline: {latency['baseline']}; {latency['features_reused']}. Times are the best of "
        "several runs (the least disturbed on a shared machine); the ratio of medians is next to it.\n\n"
        + _table(
            [
                "method",
                "minutes",
                "rolling context",
                "rolling first delta ms",
                "rolling total ms",
                "re-prefill context",
                "re-prefill first delta ms",
                "re-prefill total ms",
                "ratio (total)",
                "ratio of medians",
            ],
            rows,
        )
        + f"\n![question latency]({plot})\n"
    )


def _memory(memory: dict[str, Any], plot: str) -> str:
    rows = []
    for method, entry in memory["methods"].items():
        s = entry["summary"]
        rows.append(
            [
                method,
                s["kv_tokens_per_minute"],
                s["kv_bytes_per_minute"] / MIB,
                s["kv_bytes_per_token"],
                s["kv_bytes_per_minute_at_7b_bf16"] / MIB,
                s["token_budget"],
                s["kv_bytes_max"] / MIB,
                s["kv_second_half_spread"],
                s["rss_bytes_start"] / MIB,
                s["rss_bytes_peak"] / MIB,
                s["rss_second_half_growth_bytes"] / MIB,
            ]
        )
    return (
        "## 5. Memory\n\n"
        + _table(
            [
                "method",
                "KV tokens / min",
                "KV MiB / min (no budget)",
                "bytes / token",
                "7B bf16 MiB / min",
                "token budget",
                "KV max MiB",
                "KV spread, 2nd half",
                "RSS start MiB",
                "RSS peak MiB",
                "RSS growth, 2nd half MiB",
            ],
            rows,
        )
        + "\nPer minute: every token the stream kept, at the cache's bytes per token (the growth without a "
        "budget). Under the rolling budget the oldest chunks are evicted and the cache stays flat.\n\n"
        + f"![memory]({plot})\n"
    )


def engine_line(result: dict[str, Any]) -> str:
    """The one line comparing the engines: streams kept real time, then worker time per chunk and
    answer p95 at the same number of streams (and the GPU's busy share on CUDA)."""
    serial, batched = result["engine"]["serial"], result["engine"]["batched"]
    line = (
        f"engine: batched keeps {batched['streams_real_time']} streams real time vs {serial['streams_real_time']} "
        f"serial; worker {_cell(batched['worker_ms_per_chunk'])} ms/chunk vs {_cell(serial['worker_ms_per_chunk'])}; "
        f"answer p95 {_cell(batched['answer_total_p95_s'])} s vs {_cell(serial['answer_total_p95_s'])} s "
        f"(at {batched['at_streams']} streams)"
    )
    if batched["gpu_busy_share"] is not None:
        line += f"; GPU busy {100 * batched['gpu_busy_share']:.0f}% vs {100 * serial['gpu_busy_share']:.0f}%"
    return line


def cpu_line(result: dict[str, Any]) -> str:
    """Where the CPU went at that number of streams: worker thread, preprocessing pool, the whole
    process, and the machine's load (other processes included), as shares of all cores."""
    parts = []
    for name, summary in result["engine"].items():
        share = summary["cpu_share"]
        parts.append(
            f"{name}: worker {100 * share['worker']:.0f}%, preprocessing {100 * share['preprocessing']:.0f}%, "
            f"process {100 * share['whole_process']:.0f}%, machine {100 * share['machine_load']:.0f}%"
        )
    return f"cpu share of all cores at {result['engine']['batched']['at_streams']} streams: " + "; ".join(
        parts
    )


def _concurrency(concurrency: dict[str, Any], plot: str) -> str:
    pace = "real time" if concurrency["speed"] == 1 else f"{concurrency['speed']:g}× real time"
    source, question = concurrency["source"], concurrency["question"]
    size = "×".join(str(x) for x in source["frame_size"]) if source["frame_size"] else "no video"
    text = (
        f"## 6. Concurrency ({concurrency['chunks_per_stream']} chunks per stream, paced at {pace}, "
        f"at most {concurrency['max_pending_chunks']} pending chunks per stream)\n\n"
        f"Source: the {source['clip']} clip, {size}, at {source['min_pixels']}..{source['max_pixels']} pixels a "
        f"frame. Each stream asks a question of up to {question['max_tokens']} tokens every "
        f"{question['every_s']:g} s. Load counts the worker's time on chunks and answers; a run keeps real "
        f"time with nothing shed, load < 1 and lag p95 ≤ {concurrency['lag_bound_s']:g} s (at real time). "
        "CPU: shares of all cores (preprocessing runs on the worker in the serial engine).\n\n"
    )
    for name, figure in concurrency["engines"].items():
        rows = [
            [
                r["streams"],
                r["worker_ms_per_chunk"],
                r["load"],
                100 * r["shed_rate"],
                r["lag"]["p95_ms"],
                r["question_first_delta"]["p95_ms"],
                r["question_total"]["p95_ms"],
                f"{100 * r['cpu_share']['worker']:.0f}% / {100 * r['cpu_share']['preprocessing']:.0f}%",
                r["realtime"],
            ]
            for r in figure["rows"]
        ]
        text += (
            f"### {name}\n\n"
            + _table(
                [
                    "streams",
                    "worker ms/chunk",
                    "worker load",
                    "shed %",
                    "lag p95 ms",
                    "first delta p95 ms",
                    "answer total p95 ms",
                    "CPU worker / preprocessing",
                    "real time",
                ],
                rows,
            )
            + f"\n{_realtime_limit(figure)}\n\n"
        )
    return text + f"![concurrency]({plot})\n"


def _realtime_limit(figure: dict[str, Any]) -> str:
    largest, behind = (
        figure["largest_measured_realtime_streams"],
        figure["smallest_measured_behind_streams"],
    )
    line = f"Largest N measured that stays real time: {largest}"
    if behind is not None:
        line += f"; at {behind} streams the worker fell behind"
    elif figure["searched_up_to"] is None:
        line += " (every count listed kept up)"
    else:
        line += f" (the search stopped at its cap, {figure['searched_up_to']} streams)"
    return line + "."


def _fidelity(fidelity: dict[str, Any]) -> str:
    clips = list(fidelity["kl"])
    methods = list(dict.fromkeys(m for clip in clips for m in fidelity["kl"][clip]))
    rows = [[m, *(fidelity["kl"][clip].get(m) for clip in clips)] for m in methods]
    return (
        "## 7. Fidelity: first-token KL(full ‖ pruned), nats\n\n"
        + _table(["method", *clips], rows)
        + f"\nMean over {len(fidelity['questions'])} questions. With random weights these are noise-level "
        "divergences; compare methods with a real checkpoint.\n"
    )


def _prefilter(figure: dict[str, Any]) -> str:
    camera = figure["camera"]
    rows = [
        [
            case,
            e["chunks"],
            e["encoder_skipped_pct"],
            e["video_dropped"],
            "–" if e["event_chunk"] is None else f"{e['event_chunk']} ({e['event_reason']})",
            e["event_kept"],
            ", ".join(f"{reason} {n}" for reason, n in e["reasons"].items()),
        ]
        for case, e in figure["cases"].items()
    ]
    time = figure["encoder_time"]
    vision, chunk = time["vision_encode_ms"], time["chunk_ms"]
    return (
        f"## 8. Pre-filter ({figure['method']}; {camera['width']}x{camera['height']} at {camera['fps']} fps, "
        f"σ={camera['noise']:g} sensor noise, H.264 with a keyframe every {camera['keyframe_s']:g} s; "
        f"events at {figure['event_at_s']:g} s)\n\n"
        + _table(
            [
                "case",
                "chunks",
                "encoder skipped % (after the first)",
                "video dropped",
                "event chunk",
                "event kept",
                "pre-filter reasons",
            ],
            rows,
        )
        + f"\nThe static clip at the real pixel bounds ({time['pixels']['min']}..{time['pixels']['max']} "
        f"pixels a frame, {time['video_tokens_per_chunk']} video tokens a chunk), pre-filter on vs off, "
        f"{time['chunks']} chunks each: vision encoder {vision['prefilter_on']:.0f} ms vs "
        f"{vision['prefilter_off']:.0f} ms (×{_cell(time['vision_encode_ratio'])}), the whole chunk "
        f"{chunk['prefilter_on']:.0f} ms vs {chunk['prefilter_off']:.0f} ms (×{_cell(time['chunk_ratio'])}); "
        f"the pre-filter itself {time['prefilter_ms_per_chunk']:.1f} ms a chunk.\n"
    )


def _long_memory(figure: dict[str, Any]) -> str:
    latency = figure["latency_s"]
    minutes = list(latency["recent"])
    rows = [
        [mode, *(1000 * v if v is not None else None for v in latency[mode].values())] for mode in latency
    ]
    at_7b = figure["at_7b_bf16"]
    sizes = [
        ["device KV max", figure["device_kv_bytes_max"] / MIB, at_7b["device_kv_bytes_max"] / MIB],
        ["host", figure["host_bytes"] / MIB, at_7b["host_bytes"] / MIB],
        ["disk", figure["disk_bytes"] / MIB, at_7b["disk_bytes"] / MIB],
    ]
    return (
        f"## 9. Long memory ({figure['stream_minutes']:g} minutes, {figure['chunks']} chunks of "
        f"{figure['chunk_tokens']} tokens, budget {figure['token_budget']} tokens)\n\n"
        + _table(["answer over", *(f"ms at {m} min" for m in minutes)], rows)
        + f"\n`auto` recalls the best-matching {figure['recall_tokens']} tokens, `span` the "
        f"{figure['span_minutes']:g} minutes before the window ({figure['span_tokens']} tokens), from host memory "
        f"and disk; `recent` is the device window; `reprefill` "
        f"prefills the whole stream so far. Device cache spread over the second half: "
        f"{figure['device_kv_second_half_spread']:.3f} (0 is flat).\n\n"
        + _table(["where", "MiB (this model)", "MiB at 7B bf16"], sizes)
    )


# The report's parts in reading order, each with the bench.json key it renders (present only when its
# section ran, see sections.py).
_PARTS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("compression", lambda r: _compression(r["compression"])),
    ("costs", lambda r: _costs(r["costs"])),
    ("selection", lambda r: _selection(r["selection"])),
    ("latency", lambda r: _latency(r["latency"], r["plots"]["question_latency"])),
    ("memory", lambda r: _memory(r["memory"], r["plots"]["memory"])),
    ("concurrency", lambda r: _concurrency(r["concurrency"], r["plots"]["concurrency"])),
    ("fidelity", lambda r: _fidelity(r["fidelity"])),
    ("prefilter", lambda r: _prefilter(r["prefilter"])),
    ("long_memory", lambda r: _long_memory(r["long_memory"])),
)
