"""`streamguard bench`: the chosen sections' figures measured in one run, written as JSON, Markdown and PNGs."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamguard.backbones import Backbone, load_backbone
from streamguard.backbones.base import RANDOM_WEIGHTS_NOTE
from streamguard.bench import compression, long_memory, plots, prefilter, report, selection
from streamguard.bench.concurrency import engine_summary, measure_concurrency
from streamguard.bench.costs import compare_costs
from streamguard.bench.fidelity import QUESTIONS
from streamguard.bench.latency import QUESTION, Checkpoints, LongStream, run_long_stream
from streamguard.bench.memory import samples_as_columns, summarize_memory
from streamguard.bench.sections import SECTION_NAMES, chosen_sections
from streamguard.bench.workload import (
    FULL,
    GENERATED,
    Clip,
    Method,
    Tick,
    concurrency_clip,
    configured_method,
    generated_clips,
    load_clip,
    looped,
)
from streamguard.config import Settings, load_settings
from streamguard.pruning.a2v import fallback_warnings_muted

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Scale:
    """How much each figure measures: the full run, or `--quick` for tests and smoke checks."""

    clip_seconds: float
    minutes: tuple[float, ...]
    streams: tuple[int, ...]
    concurrency_chunks: int
    concurrency_speed: float  # 1: streams paced at real time
    concurrency_search_max: int  # double N past `streams` up to this while runs keep real time
    concurrency_source: tuple[int, int, float] | None  # a camera (width, height, fps); None: the moving clip
    concurrency_pixels: tuple[int, int] | None  # (min, max) pixels a frame; None: the config's
    selection_grids: tuple[tuple[int, int], ...]
    selection_reps: int
    question_rounds: int  # each a re-prefill answer and `question_reps` rolling ones
    question_reps: int
    camera_seconds: float  # each pre-filter case's clip
    memory_minutes: tuple[float, ...]  # long memory: when the question is asked


# Concurrency at a 720p camera and Qwen2.5-Omni's own pixel bounds (smart_resize to 560×1008).
CAMERA_720P = (1280, 720, 25.0)
QWEN_PIXEL_BOUNDS = (128 * 28 * 28, 768 * 28 * 28)
FULL_SCALE = Scale(
    30.0,
    (1, 2, 5, 10),
    (1, 2),  # then doubling while real time; at 720p on a small CPU few streams keep up
    10,
    1.0,
    512,
    CAMERA_720P,
    QWEN_PIXEL_BOUNDS,
    selection.GRIDS,
    10,
    3,
    3,
    60.0,
    (10, 30, 60),
)
# the quick long-memory stream still outgrows the tiny config's budget (about 2.3 minutes)
QUICK_SCALE = Scale(
    8.0, (0.25, 2), (1, 2), 4, 8.0, 4, None, None, selection.GRIDS[:1], 2, 2, 2, 12.0, (2.5, 4)
)


@dataclass(frozen=True)
class BenchOptions:
    config: str
    out: Path
    quick: bool = False
    files: tuple[Path, ...] = ()
    minutes: tuple[float, ...] = ()  # empty: the scale's
    streams: tuple[int, ...] = ()
    memory_minutes: tuple[float, ...] = ()
    model: str | None = None  # overrides model.path
    threads: int | None = None  # torch intra-op threads; None: one on a CPU, torch's default otherwise
    sections: tuple[str, ...] = SECTION_NAMES  # those to run, in the table's order (sections.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", chosen_sections(self.sections))

    @property
    def scale(self) -> Scale:
        base = QUICK_SCALE if self.quick else FULL_SCALE
        overrides: dict[str, Any] = {}
        if self.minutes:
            overrides["minutes"] = tuple(sorted(self.minutes))
        if self.streams:
            overrides["streams"] = tuple(sorted(self.streams))
        if self.memory_minutes:
            overrides["memory_minutes"] = tuple(sorted(self.memory_minutes))
        return Scale(**{**asdict(base), **overrides})


# The sections each sizing option feeds: given without any of them chosen it would do nothing.
OPTION_SECTIONS = {
    "files": ("compression",),
    "minutes": ("costs", "latency"),
    "streams": ("concurrency",),
    "memory_minutes": ("long_memory",),
}


def _refuse_unused_options(options: BenchOptions) -> None:
    for option, users in OPTION_SECTIONS.items():
        if getattr(options, option) and not set(users) & set(options.sections):
            flag = "--" + option.replace("_", "-")
            raise ValueError(
                f"{flag} is used by the {' and '.join(users)} section(s), which --sections leaves out"
            )


def run_bench(options: BenchOptions, console: Console) -> dict[str, Any]:
    """Measure the chosen sections, write bench.json, report.md and their plots to `options.out`."""
    started = time.perf_counter()
    scale = options.scale
    chosen = set(options.sections)
    settings = load_settings(options.config, **({"model": {"path": options.model}} if options.model else {}))
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the bench writes a folder")
    _refuse_unused_options(options)
    # The user's files first: one that cannot be decoded fails before anything is loaded or written.
    files = [load_clip(str(path), Path(path), settings.chunk) for path in options.files]
    out.mkdir(parents=True, exist_ok=True)
    # Only the clips a chosen section replays are written: the camera cases take a while at full scale.
    clips = generated_clips(out / "clips", scale.clip_seconds, settings.chunk, _clips_needed(chosen, scale))
    cameras = (
        prefilter.camera_clips(out / "clips", scale.camera_seconds, settings) if "prefilter" in chosen else []
    )
    source = (
        concurrency_clip(out / "clips", scale.concurrency_source, settings.chunk)
        if "concurrency" in chosen and scale.concurrency_source is not None
        else None
    )
    with console.status(f"loading {settings.model.path}"):
        backbone = load_backbone(settings.model, settings.chunk)
    if backbone.random_weights:
        console.print(f"[yellow]{settings.model.path} has {RANDOM_WEIGHTS_NOTE}[/yellow]")
    if not settings.pruning.predictor_path:
        console.print(
            "[yellow]No A2V predictor configured: ContextGuard scores video against the mean audio "
            "embedding, so 'contextguard' and 'mean_audio' select alike.[/yellow]"
        )
    # One intra-op thread on a CPU by default: the tiny model's kernels gain nothing from more, and
    # on a machine shared with other work, threads waiting for each other make every timing erratic.
    threads = options.threads or (1 if backbone.device.type == "cpu" else torch.get_num_threads())
    result: dict[str, Any] = {}
    with _torch_threads(threads), fallback_warnings_muted(), _progress(console) as section:
        run = _Run(backbone, settings, scale, clips + files, cameras, source, section, out)
        for name in options.sections:
            result |= MEASURES[name](run)
    result["environment"] = environment(backbone, settings, options) | {"torch_threads": threads}
    if "concurrency" in result:
        result["engine"] = engine_summary(result["concurrency"])
    result["headline"] = headline(result)
    result["duration_s"] = time.perf_counter() - started
    result["plots"] = {
        name: plot(result[key], out / f"{name}.png").name
        for name, (key, plot) in PLOTS.items()
        if key in result
    }
    report.write_json(result, out / "bench.json")
    report.write_markdown(result, out / "report.md")
    return result


# Each plot: the bench.json key it draws, and how.
PLOTS: dict[str, tuple[str, Callable[[dict[str, Any], Path], Path]]] = {
    "question_latency": ("latency", plots.plot_latency),
    "memory": ("memory", plots.plot_memory),
    "concurrency": ("concurrency", plots.plot_concurrency),
}


def _clips_needed(chosen: set[str], scale: Scale) -> set[str]:
    """The generated clips the chosen sections replay: compression all, the long replays the moving one,
    and so does concurrency when the scale has no camera for it."""
    if "compression" in chosen:
        return {name for name, _ in GENERATED}
    moving_users = {"costs", "latency"} | ({"concurrency"} if scale.concurrency_source is None else set())
    return {"moving"} if chosen & moving_users else set()


@dataclass(frozen=True)
class _Run:
    """What the chosen sections share: the loaded backbone, the scale and the prepared clips."""

    backbone: Backbone
    settings: Settings
    scale: Scale
    clips: list[Clip]  # generated (only those needed) and the user's files
    cameras: list[Clip]  # the pre-filter's cases; empty unless it runs
    source: Clip | None  # the concurrency figure's camera; None: the moving clip
    section: Callable[[str, int | None], Tick]  # adds a progress bar
    out: Path

    @property
    def moving(self) -> Clip:
        return next(c for c in self.clips if c.name == "moving")

    @property
    def long_methods(self) -> list[Method]:
        return [FULL, configured_method(self.settings)]

    @property
    def checkpoints(self) -> Checkpoints:
        scale = self.scale
        return Checkpoints.at_minutes(
            scale.minutes, self.settings.chunk.seconds, scale.question_rounds, scale.question_reps
        )


def _compression(run: _Run) -> dict[str, Any]:
    tick = run.section("1,7 compression, fidelity", sum(compression.steps_per_clip(c) for c in run.clips))
    per_clip = {
        c.name: compression.measure_clip(run.backbone, run.settings, c, QUESTIONS, tick) for c in run.clips
    }
    return {
        "compression": {
            c.name: {
                "file": str(c.path),
                "chunks": len(c.chunks),
                "methods": per_clip[c.name]["compression"],
                "offline_skipped": per_clip[c.name]["offline_skipped"],
            }
            for c in run.clips
        },
        "fidelity": {
            "questions": QUESTIONS,
            "reference": FULL.name,
            "kl": {name: entry["fidelity"] for name, entry in per_clip.items()},
        },
    }


def _costs(run: _Run) -> dict[str, Any]:
    chunks = max(run.checkpoints.at)
    tick = run.section("2,5 long streams", len(run.long_methods) * chunks)
    replays = [
        run_long_stream(run.backbone, run.settings, m, run.moving.chunks, chunks, tick)
        for m in run.long_methods
    ]
    return {
        "costs": {
            "methods": {"full": replays[0].method, "pruned": replays[1].method},
            **compare_costs(replays[0].reports, replays[1].reports),
        },
        "memory": {"methods": {s.method: _memory_entry(s, run.settings) for s in replays}},
    }


def _latency(run: _Run) -> dict[str, Any]:
    checkpoints, moving = run.checkpoints, run.moving
    chunks = max(checkpoints.at)
    tick = run.section("4 question latency", len(run.long_methods) * (chunks + len(checkpoints.at)))
    asked = [
        run_long_stream(run.backbone, run.settings, m, moving.chunks, chunks, tick, checkpoints)
        for m in run.long_methods
    ]
    return {
        "latency": {
            "question": QUESTION,
            "source": f"the {moving.name} clip ({len(moving.chunks)} chunks) looped",
            "baseline": "a fresh session prefilled with every token the stream kept, then the question",
            "features_reused": "its features are each distinct chunk's, encoded once outside its timing",
            "methods": {s.method: s.checkpoints for s in asked},
        }
    }


def _selection(run: _Run) -> dict[str, Any]:
    grids = run.scale.selection_grids
    tick = run.section("3 selection at 7B width", selection.steps(grids))
    return {
        "selection": selection.measure_selection(
            run.backbone, run.settings, grids, run.scale.selection_reps, tick
        )
    }


def _prefilter(run: _Run) -> dict[str, Any]:
    tick = run.section("8 pre-filter", prefilter.steps(run.cameras))
    return {"prefilter": prefilter.measure_prefilter(run.backbone, run.settings, run.cameras, tick)}


def _concurrency(run: _Run) -> dict[str, Any]:
    scale, settings = run.scale, run.settings
    source = run.source or run.moving
    # The search past the listed counts runs as long as the machine keeps up: no known total.
    searching = scale.concurrency_search_max > max(scale.streams)
    total = 2 * sum(scale.streams) * scale.concurrency_chunks  # both engines
    tick = run.section("6 concurrency, both engines", None if searching else total)
    concurrency_chunks = list(looped(source.chunks, scale.concurrency_chunks, settings.chunk.seconds))
    at_bounds, bound_settings = at_pixel_bounds(run.backbone, settings, scale.concurrency_pixels)
    concurrency = measure_concurrency(
        at_bounds,
        bound_settings,
        concurrency_chunks,
        scale.streams,
        scale.concurrency_speed,
        tick,
        scale.concurrency_search_max,
    )
    concurrency["source"] = {
        "clip": source.name,
        "frame_size": list(source.chunks[0].frames[0].shape[1::-1]) if source.chunks[0].frames else None,
        "min_pixels": bound_settings.model.min_pixels,
        "max_pixels": bound_settings.model.max_pixels,
    }
    return {"concurrency": concurrency}


def _long_memory(run: _Run) -> dict[str, Any]:
    minutes = run.scale.memory_minutes
    tick = run.section("9 long memory", long_memory.steps(minutes, run.settings.chunk.seconds))
    return {
        "long_memory": long_memory.measure_long_memory(
            run.backbone, run.settings, minutes, run.scale.question_reps, tick, run.out
        )
    }


# Each section of the table (sections.py), how it is measured; each returns its bench.json keys.
MEASURES: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "compression": _compression,
    "costs": _costs,
    "latency": _latency,
    "selection": _selection,
    "prefilter": _prefilter,
    "concurrency": _concurrency,
    "long_memory": _long_memory,
}


def at_pixel_bounds(
    backbone: Backbone, settings: Settings, pixels: tuple[int, int] | None
) -> tuple[Backbone, Settings]:
    """The backbone and settings at other per-frame pixel bounds (the processor's, fixed when a
    backbone loads): loaded again unless the config already has them."""
    if pixels is None or (settings.model.min_pixels, settings.model.max_pixels) == pixels:
        return backbone, settings
    model = settings.model.model_copy(update={"min_pixels": pixels[0], "max_pixels": pixels[1]})
    return load_backbone(model, settings.chunk), settings.model_copy(update={"model": model})


def _memory_entry(stream: LongStream, settings: Settings) -> dict[str, Any]:
    summary = summarize_memory(
        stream.memory,
        stream.stats,
        stream.prefix_tokens,
        settings.session.token_budget,
        settings.chunk.seconds,
    )
    return {"summary": summary, "series": samples_as_columns(stream.memory)}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few figures a reader wants first (also quoted in the report's opening table), those the
    sections that ran can give."""
    head: dict[str, Any] = {}
    if "compression" in result:
        head["input_tokens_pruned_pct"] = {
            clip: {method: entry["input_tokens_pruned_pct"] for method, entry in figure["methods"].items()}
            for clip, figure in result["compression"].items()
        }
    if "latency" in result:
        pruned = list(result["latency"]["methods"])[-1]  # after full: the configured method
        measured = [r for r in result["latency"]["methods"][pruned] if r["reprefill"] is not None]
        at_five = min(measured, key=lambda r: abs(r["minutes"] - 5), default=None)
        head["question_latency_ratio"] = (
            None
            if at_five is None
            else {"minutes": at_five["minutes"], "method": pruned, "total_ratio": at_five["total_ratio"]}
        )
    if "memory" in result:
        memory = result["memory"]["methods"]
        head["kv_bytes_per_minute"] = {m: e["summary"]["kv_bytes_per_minute"] for m, e in memory.items()}
        head["kv_bytes_per_minute_at_7b_bf16"] = {
            m: e["summary"]["kv_bytes_per_minute_at_7b_bf16"] for m, e in memory.items()
        }
    if "engine" in result:
        head["largest_realtime_streams"] = result["engine"]["batched"]["streams_real_time"]
    if "prefilter" in result:
        figure = result["prefilter"]
        head["prefilter"] = {
            "static_encoder_skipped_pct": figure["cases"]["static"]["encoder_skipped_pct"],
            "vision_encode_ratio": figure["encoder_time"]["vision_encode_ratio"],
            "events_kept": all(
                case["event_kept"] for case in figure["cases"].values() if case["event_chunk"] is not None
            ),
        }
    if "selection" in result:
        widest = result["selection"]["rows"][-1]
        head["selection_share_pct"] = {
            # measured on the long replay: only when costs ran
            "loaded_model_measured": result["costs"]["selection_share_pct"] if "costs" in result else None,
            "7b_width_scaled": widest["selection_share_pct_scaled"],
            "7b_width_at_matmul_throughput": widest["selection_share_pct_at_matmul_throughput"],
            "grid": widest["grid"],
        }
    return head


def environment(backbone: Backbone, settings: Settings, options: BenchOptions) -> dict[str, Any]:
    device = backbone.device
    config = settings.model_dump(mode="json", exclude={"service": {"tokens"}})
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "model": settings.model.path,
        # a tiny or random: build: answers and fidelity are noise, costs are real
        "random_weights": backbone.random_weights,
        "config_file": options.config,
        "config": config,
        "quick": options.quick,
        "sections": list(options.sections),
        "scale": asdict(options.scale),
        "git_commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit, with "-dirty" when it has local changes; None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if changes else "")


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, int | None], Tick]]:
    """One bar per section; `section(name, total)` adds one and returns its step callback."""
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:

        def section(name: str, total: int | None) -> Tick:
            task = progress.add_task(name, total=total)
            return lambda: progress.advance(task)

        yield section


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
