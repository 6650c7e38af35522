"""The `streamguard` command line."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamguard.config import load_settings

console = Console(stderr=True)
out = Console()


def _settings_from(args: argparse.Namespace):
    overrides: dict[str, dict] = {}
    if getattr(args, "pruning", None):
        overrides.setdefault("pruning", {})["method"] = args.pruning
    if getattr(args, "drop_policy", None):
        overrides.setdefault("pruning", {})["drop_policy"] = args.drop_policy
    if getattr(args, "predictor", None):
        overrides.setdefault("pruning", {})["predictor_path"] = args.predictor
    if getattr(args, "model", None):
        overrides.setdefault("model", {})["path"] = args.model
    if getattr(args, "max_new_tokens", None):
        overrides.setdefault("session", {})["max_new_tokens"] = args.max_new_tokens
    return load_settings(args.config, **overrides)


# -- replay ------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from streamguard.backbones import load_backbone
    from streamguard.engine.pipeline import create_pipeline
    from streamguard.ingest.files import iter_chunks, probe

    settings = _settings_from(args)
    info = probe(args.file)
    with console.status(f"loading {settings.model.path}"):
        backbone = load_backbone(settings.model, settings.chunk)
        pipeline = create_pipeline(backbone, settings)
    session = pipeline.session
    # Validate the question before spending time on the stream.
    if args.question:
        session.question_tokens(args.question)
    expected = max(1, math.ceil(info.duration / settings.chunk.seconds)) if info.duration else None
    reports = []
    answered = False
    started = time.monotonic()
    columns = (TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("chunks", total=expected)
        for chunk in iter_chunks(args.file, settings.chunk):
            if args.realtime:
                time.sleep(max(0.0, started + chunk.start + settings.chunk.seconds - time.monotonic()))
            reports.append(pipeline.process(chunk))
            progress.advance(task)
            chunk_end = chunk.start + settings.chunk.seconds
            if args.question and args.at is not None and not answered and chunk_end >= args.at:
                progress.stop()
                _ask(session, args.question, chunk_end)
                answered = True
    if not reports:
        console.print(f"[red]{args.file}: no chunk could be cut from this file")
        return 1
    out.print(_chunk_table(reports))
    summary = _summary(reports, session, time.monotonic() - started, settings.chunk.seconds)
    out.print(
        f"compression: {summary['input_tokens_pruned_pct']:.1f}% of input tokens pruned "
        f"({summary['video_tokens_pruned_pct']:.1f}% of video tokens); "
        f"{summary['chunks_video_dropped']} chunk(s) with video dropped as redundant; "
        f"KV cache {summary['kv_tokens']} tokens, {summary['kv_bytes'] / 2**20:.2f} MiB; "
        f"real-time factor {summary['real_time_factor']:.2f}"
    )
    if args.question and not answered:
        _ask(session, args.question, reports[-1].start + settings.chunk.seconds)
    if args.json:
        payload = {"file": str(args.file), "summary": summary, "chunks": [asdict(r) for r in reports]}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


def _ask(session, question: str, at_seconds: float) -> None:
    out.print(f"[bold]Q[/bold] (at {at_seconds:.0f} s): {question}")
    out.print("[bold]A[/bold]: ", end="")
    for delta in session.ask(question):
        out.print(delta, end="", markup=False, highlight=False)
    stats = session.stats.last_answer
    ttfd = "n/a" if stats.time_to_first_delta_s is None else f"{stats.time_to_first_delta_s * 1000:.0f} ms"
    out.print(
        f"\n[dim]{stats.generated_tokens} tokens, first delta after {ttfd}, {stats.total_s * 1000:.0f} ms[/dim]"
    )


def _chunk_table(reports) -> Table:
    table = Table(title="chunks")
    for name in ("#", "start s", "video in", "video kept", "audio", "note"):
        table.add_column(name, justify="right")
    for stage in ("preprocess", "vision_encode", "audio_encode", "select", "prefill"):
        table.add_column(f"{stage} ms", justify="right")
    for r in reports:
        note = (
            "video dropped"
            if r.video_dropped
            else ("prev. video evicted" if r.previous_video_evicted else "")
        )
        if r.audio_missing:
            note = (note + " no audio").strip()
        table.add_row(
            str(r.index),
            f"{r.start:.1f}",
            str(r.video_tokens_in),
            str(r.video_tokens_kept),
            str(r.audio_tokens),
            note,
            *(
                f"{r.timings_ms.get(stage, 0.0):.1f}"
                for stage in ("preprocess", "vision_encode", "audio_encode", "select", "prefill")
            ),
        )
    return table


def _summary(reports, session, elapsed: float, seconds_per_chunk: float) -> dict:
    video_in = sum(r.video_tokens_in for r in reports)
    tokens_in = sum(r.tokens_in for r in reports)
    # Held tokens come from the session: the `previous` policy evicts video after its report.
    video_kept = session.stats.video_tokens_kept
    tokens_kept = video_kept + session.stats.audio_tokens
    return {
        "chunks": len(reports),
        "video_tokens_in": video_in,
        "video_tokens_kept": video_kept,
        "input_tokens": tokens_in,
        "input_tokens_kept": tokens_kept,
        "video_tokens_pruned_pct": 100.0 * (1 - video_kept / video_in) if video_in else 0.0,
        "input_tokens_pruned_pct": 100.0 * (1 - tokens_kept / tokens_in) if tokens_in else 0.0,
        "chunks_video_dropped": sum(r.video_dropped or r.previous_video_evicted for r in reports),
        "kv_tokens": session.cache_tokens,
        "kv_bytes": session.cache_bytes,
        "real_time_factor": elapsed / (len(reports) * seconds_per_chunk),
    }


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamguard", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("replay", help="stream a local audio-video file through a session")
    replay.add_argument("file", type=Path)
    replay.add_argument("--config", default="default", help="a config name under configs/ or a YAML path")
    replay.add_argument("--model", help="override model.path (hub id, local folder or tiny:qwen2.5-omni)")
    replay.add_argument("--pruning", choices=["none", "contextguard", "random", "high", "mean_audio"])
    replay.add_argument("--drop-policy", choices=["current", "previous", "off"])
    replay.add_argument("--predictor", help="an A2V predictor checkpoint folder")
    replay.add_argument("--question", "-q", help="a question to ask")
    replay.add_argument(
        "--at", type=float, help="ask once the stream reaches this many seconds (default: the end)"
    )
    replay.add_argument(
        "--realtime", action="store_true", help="pace chunks at real time instead of as fast as possible"
    )
    replay.add_argument("--max-new-tokens", type=int)
    replay.add_argument("--json", help="write the per-chunk report and summary to this JSON file")
    replay.set_defaults(run=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as exc:
        # Bad input (a missing file, a corrupt video, a wrong model, an oversized question): one clear line.
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
