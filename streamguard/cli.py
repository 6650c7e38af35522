"""The `streamguard` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamguard.config import load_settings

if TYPE_CHECKING:
    from streamguard_client import StreamGuard

console = Console(stderr=True)
out = Console()
MODEL_HELP = (
    "override model.path: a hub id, a local folder, tiny:qwen2.5-omni (tiny test model) or "
    "random:qwen2.5-omni-7b[?layers=T,V,A] (a released architecture with random weights)"
)


def _say_if_random(backbone) -> None:
    from streamguard.backbones.base import RANDOM_WEIGHTS_NOTE

    if backbone.random_weights:
        console.print(f"[yellow]{escape(backbone.model_id)} has {RANDOM_WEIGHTS_NOTE}[/yellow]")


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
    from streamguard.engine.replay import summarize_replay
    from streamguard.ingest import MediaError
    from streamguard.ingest.files import iter_chunks, probe

    settings = _settings_from(args)
    info = probe(args.file)
    with console.status(f"loading {settings.model.path}"):
        backbone = load_backbone(settings.model, settings.chunk)
        pipeline = create_pipeline(backbone, settings, profile=True)
    _say_if_random(backbone)
    session = pipeline.session
    # Validate the question before spending time on the stream.
    if args.question:
        session.question_tokens(args.question)
    expected = max(1, math.ceil(info.duration / settings.chunk.seconds)) if info.duration else None
    reports = []
    answered = False
    broken: MediaError | None = None
    started = time.monotonic()
    columns = (TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("chunks", total=expected)
        try:
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
        except MediaError as exc:  # a truncated or corrupt tail: show what was streamed, then fail
            if not reports:
                raise
            broken = exc
    if not reports:
        console.print(f"[red]{args.file}: no chunk could be cut from this file")
        return 1
    out.print(_chunk_table(reports))
    summary = summarize_replay(reports, session, time.monotonic() - started, settings.chunk.seconds)
    out.print(
        f"compression: {summary['input_tokens_pruned_pct']:.1f}% of input tokens pruned "
        f"({summary['video_tokens_pruned_pct']:.1f}% of video tokens); "
        f"{summary['chunks_video_dropped']} chunk(s) with video dropped as redundant, "
        f"{summary['chunks_encoder_skipped']} of them skipped before encoding; "
        f"KV cache {summary['kv_tokens']} tokens, {summary['kv_bytes'] / 2**20:.2f} MiB; "
        f"real-time factor {summary['real_time_factor']:.2f}"
    )
    if pipeline.pruner.reference_mode == "mean_audio" and settings.pruning.method == "contextguard":
        out.print(
            "semantic reference: the mean audio embedding, ContextGuard's weaker fallback "
            "(no A2V predictor: train one with `streamguard train-a2v`, then set --predictor)"
        )
    if args.question and not answered:
        _ask(session, args.question, reports[-1].start + settings.chunk.seconds)
    if args.json:
        payload = {"file": str(args.file), "summary": summary, "chunks": [asdict(r) for r in reports]}
        if broken is not None:
            payload["error"] = str(broken)
        Path(args.json).write_text(json.dumps(payload, indent=2))
    if broken is not None:
        console.print(f"[red]error:[/red] stopped after {len(reports)} chunk(s): {broken}", highlight=False)
        return 2
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
    from streamguard.engine.pipeline import STAGES

    table = Table(title="chunks")
    for name in ("#", "start s", "video in", "video kept", "audio", "note"):
        table.add_column(name, justify="right")
    for stage in STAGES:
        table.add_column(f"{stage} ms", justify="right")
    for r in reports:
        if r.encoder_skipped:
            note = "skipped before encoding"
        elif r.video_dropped:
            note = "video dropped"
        else:
            note = "prev. video evicted" if r.previous_video_evicted else ""
        if r.audio_missing:
            note = (note + " no audio").strip()
        table.add_row(
            str(r.index),
            f"{r.start:.1f}",
            str(r.video_tokens_in),
            str(r.video_tokens_kept),
            str(r.audio_tokens),
            note,
            *(f"{r.timings_ms.get(stage, 0.0):.1f}" for stage in STAGES),
        )
    return table


# -- bench -------------------------------------------------------------------------------------


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: one positive number of `kind`."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _number_list(kind: type[int] | type[float]) -> Callable[[str], tuple]:
    """An argparse type for `1,2,5`: positive numbers of `kind`."""
    item = _positive(kind)
    return lambda text: tuple(item(part) for part in text.split(","))


def _section_list(text: str) -> tuple[str, ...]:
    """An argparse type for `concurrency,costs`: names from the bench's table of sections."""
    from streamguard.bench.sections import chosen_sections

    try:
        return chosen_sections(part.strip() for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_bench(args: argparse.Namespace) -> int:
    from streamguard.bench import BenchOptions, run_bench
    from streamguard.bench.report import cpu_line, engine_line
    from streamguard.bench.sections import SECTION_NAMES

    options = BenchOptions(
        config=args.config,
        out=args.out,
        quick=args.quick,
        files=tuple(args.files),
        minutes=args.minutes or (),
        streams=args.streams or (),
        memory_minutes=args.memory_minutes or (),
        model=args.model,
        threads=args.threads,
        sections=args.sections or SECTION_NAMES,
    )
    result = run_bench(options, console)
    if "engine" in result:  # only when the concurrency section ran
        out.print(engine_line(result))
        out.print(cpu_line(result))
    out.print(
        f"wrote {args.out / 'bench.json'}, {args.out / 'report.md'} and plots in {result['duration_s']:.0f} s"
    )
    return 0


# -- eval --------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from streamguard.eval.report import failure_lines, summary_table, task_table
    from streamguard.eval.runner import EvalOptions, run_eval

    options = EvalOptions(
        dataset=args.dataset,
        out=args.out,
        config=args.config,
        methods=tuple(args.methods or [args.method]),
        format=args.format,
        video_root=args.video_root,
        limit=args.limit,
        resume=args.resume,
        model=args.model,
        max_new_tokens=args.max_new_tokens,
    )
    summary = run_eval(options, console)
    out.print(summary_table(summary))
    if (tasks := task_table(summary)) is not None:
        out.print(tasks)
    for line in failure_lines(summary):
        out.print(f"[red]failed[/red] {escape(line)}", highlight=False)
    out.print(f"wrote {args.out / 'results.jsonl'} and {args.out / 'summary.json'}")
    return 0


# -- train-a2v ---------------------------------------------------------------------------------

# `train-a2v` flags, each setting the TrainOptions field it names: (flag, type, field, help).
_TRAIN_FLAGS = (
    ("--epochs", int, "epochs", "epochs"),
    ("--batch-size", int, "batch_size", "chunks per batch"),
    ("--lr", float, "lr", "AdamW learning rate"),
    ("--weight-decay", float, "weight_decay", "AdamW weight decay"),
    ("--val-fraction", float, "val_fraction", "share of the videos held out for validation"),
    ("--seed", int, "seed", "seed of the split, the initialisation and the batch order"),
    ("--queries", int, "num_queries", "learnable queries"),
    ("--layers", int, "num_layers", "cross-attention layers"),
    ("--heads", int, "num_heads", "attention heads (must divide the hidden size)"),
    ("--checkpoint-steps", int, "checkpoint_steps", "checkpoint every this many steps too"),
)


def cmd_train_a2v(args: argparse.Namespace) -> int:
    from streamguard.train.job import train_a2v
    from streamguard.train.options import TrainOptions
    from streamguard.train.report import summary_tables

    chosen = {name: getattr(args, name) for _, _, name, _ in _TRAIN_FLAGS}
    options = TrainOptions(**{name: value for name, value in chosen.items() if value is not None})
    settings = _settings_from(args)
    try:
        run = train_a2v(
            args.video_dir,
            settings,
            args.out,
            options,
            cache_dir=args.cache,
            resume=args.resume,
            console=console,
        )
    except KeyboardInterrupt:
        console.print(f"interrupted: continue from the last checkpoint with --resume --out {args.out}")
        return 130
    for table in summary_tables(run.report):
        out.print(table)
    features = run.features
    out.print(
        f"features: {len(features.extracted)} video(s) extracted, {len(features.reused)} from the cache, "
        f"{len(features.skipped)} skipped; predictor in {args.out} (pruning.predictor_path), "
        f"report {run.report_path}"
    )
    return 0


# -- serve, ask, streams -----------------------------------------------------------------------

TOKEN_ENV = "STREAMGUARD_TOKEN"
DEV_TOKEN = "streamguard-dev-token"


def _serve_config(args: argparse.Namespace) -> str:
    """The config `serve` runs: the one asked for, else the GPU default, else the CPU demo."""
    import torch

    if args.config is not None:
        return args.config
    if torch.cuda.is_available():
        return "default"
    console.print(
        "[yellow]No CUDA GPU: serving the tiny demo model (random weights: the whole pipeline runs, "
        "the answers are noise). Pass --config default (Qwen2.5-Omni-7B) to insist.[/yellow]"
    )
    return "tiny"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from streamguard.backbones import load_backbone
    from streamguard.service import create_app, server_config
    from streamguard.service.logs import redact_server_logs

    args.config = _serve_config(args)
    settings = _settings_from(args)
    if settings.cluster.redis_url:  # checked first: a model load takes a while
        from streamguard.cluster import StoreUnavailableError, check_store

        try:
            asyncio.run(check_store(settings.cluster))
        except (StoreUnavailableError, ValueError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            return 2
    host, port = args.host or settings.service.host, args.port or settings.service.port
    # the service's `event key=value` lines (stream lifecycle, questions) at INFO
    logging.getLogger("streamguard").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # Loaded before the server starts, so a missing checkpoint is one clear line, not a traceback.
    with console.status(f"loading {settings.model.path}"):
        backbone = load_backbone(settings.model, settings.chunk)
    _say_if_random(backbone)
    base = f"http://{host}:{port}"
    if settings.cluster.public_url is None and host not in ("0.0.0.0", "::"):
        settings.cluster.public_url = base  # where a full worker of the cluster may send new streams
    console.print(f"StreamGuard: model {settings.model.path} on {backbone.device}, config {args.config}")
    console.print(f"  page     {base}/\n  API docs {base}/docs\n  metrics  {base}/metrics")
    if DEV_TOKEN in settings.service.tokens:
        console.print(
            f"  [yellow]token: the development token '{DEV_TOKEN}' is accepted; set "
            "STREAMGUARD_SERVICE__TOKENS='[\"<secret>\"]' before exposing this server[/yellow]"
        )
    else:
        console.print("  token: one of service.tokens (clients: --token or STREAMGUARD_TOKEN)")
    config = server_config(
        create_app(settings, backbone), host=host, port=port, log_level="debug" if args.verbose else "info"
    )
    redact_server_logs()  # after the Config: it sets uvicorn's logging up
    # Ctrl-C: uvicorn shuts down cleanly, then raises the signal again for the caller to see
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    return 0


def _client_target(args: argparse.Namespace) -> tuple[str, str]:
    """The service URL and token a client command uses: flags, then env, then the config."""
    settings = load_settings(args.config)
    url = (args.url or f"http://{settings.service.host}:{settings.service.port}").rstrip("/")
    token = args.token or os.environ.get(TOKEN_ENV) or (settings.service.tokens or [""])[0]
    return url, token


def cmd_ask(args: argparse.Namespace) -> int:
    return asyncio.run(_with_client(args, lambda client: _ask_remote(client, args)))


async def _with_client(args: argparse.Namespace, work: Callable[[StreamGuard], Awaitable[int]]) -> int:
    """Run `work` with a client of the service; a refusal or an unreachable service is one line."""
    from streamguard_client import Backoff, ServiceError, StreamGuard, StreamGuardError

    url, token = _client_target(args)
    # a command line fails fast: one retry, not a minute of them
    async with StreamGuard(url, token, backoff=Backoff(attempts=1)) as client:
        try:
            return await work(client)
        except ServiceError as exc:
            console.print(f"[red]error ({exc.code}):[/red] {escape(exc.message)}", highlight=False)
        except StreamGuardError as exc:  # unreachable, or the connection dropped
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return 1


async def _ask_remote(client: StreamGuard, args: argparse.Namespace) -> int:
    answer = client.ask(args.stream, args.question, max_tokens=args.max_tokens)
    async for delta in answer:
        out.print(delta, end="", markup=False, highlight=False)
    assert answer.stats is not None  # set when the iteration ends without an error
    stats = answer.stats
    first = stats["time_to_first_delta_ms"]
    first_text = "n/a" if first is None else f"{first:.0f} ms"
    out.print(
        f"\n[dim]{stats['generated_tokens']} tokens ({stats['finish_reason']}), first delta after "
        f"{first_text}, {stats['total_ms']:.0f} ms, context {stats['context_tokens']} tokens[/dim]"
    )
    return 0


def cmd_streams(args: argparse.Namespace) -> int:
    return asyncio.run(_with_client(args, lambda client: _list_streams(client, args)))


async def _list_streams(client: StreamGuard, args: argparse.Namespace) -> int:
    url = client.url
    streams = await client.streams()
    if args.json:
        out.print_json(data=streams)
        return 0
    if not streams:
        out.print(f"no streams on {url}")
        return 0
    table = Table(title=f"streams on {url}")
    for name in ("id", "kind", "state", "source"):
        table.add_column(name)
    for name in (
        "chunks",
        "redundant",
        "skipped",
        "shed",
        "pruned",
        "RTF",
        "queue",
        "KV MiB",
        "questions",
        "p50 ms",
    ):
        table.add_column(name, justify="right")
    for stream in streams:
        stats = stream["stats"]
        rtf, p50 = stats["real_time_factor"], stats["answer_latency"]["p50_ms"]
        table.add_row(
            stream["id"],
            stream["kind"],
            stream["state"] + (f" ({stream['error']})" if stream["error"] else ""),
            stream["source"],
            f"{stats['chunks_processed']}/{stats['chunks_received']}",
            str(stats["chunks_dropped_redundant"]),
            str(stats["chunks_encoder_skipped"]),
            str(stats["chunks_shed"]),
            f"{100 * stats['compression']:.0f}%",
            "-" if rtf is None else f"{rtf:.2f}",
            str(stats["queue_depth"]),
            f"{stats['kv_bytes'] / 2**20:.1f}",
            str(stats["questions_answered"]),
            "-" if p50 is None else f"{p50:.0f}",
        )
    out.print(table)
    return 0


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamguard", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("replay", help="stream a local audio-video file through a session")
    replay.add_argument("file", type=Path)
    replay.add_argument("--config", default="default", help="a config name under configs/ or a YAML path")
    replay.add_argument("--model", help=MODEL_HELP)
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

    from streamguard.bench.sections import SECTION_NAMES, sections_help

    bench = commands.add_parser("bench", help="measure " + ", ".join(SECTION_NAMES).replace("_", " "))
    bench.add_argument("--config", default="default", help="a config name under configs/ or a YAML path")
    bench.add_argument("--model", help=MODEL_HELP)
    bench.add_argument(
        "--out", type=Path, required=True, help="folder for bench.json, report.md and the plots"
    )
    bench.add_argument("--quick", action="store_true", help="a reduced run (short clips and streams)")
    bench.add_argument("--sections", type=_section_list, metavar="NAME[,NAME...]", help=sections_help())
    bench.add_argument(
        "--files", nargs="+", type=Path, default=[], help="files to measure compression on too"
    )
    bench.add_argument(
        "--minutes",
        type=_number_list(float),
        help="stream lengths for the long replays: costs, and question latency (default 1,2,5,10)",
    )
    bench.add_argument(
        "--streams",
        type=_number_list(int),
        help="concurrent stream counts, each engine, then doubling while real time (default 1,2)",
    )
    bench.add_argument(
        "--memory-minutes",
        type=_number_list(float),
        help="when the long-memory stream is asked, its last the stream's length (default 10,30,60)",
    )
    bench.add_argument(
        "--threads",
        type=_positive(int),
        help="torch CPU threads (default: 1 on a CPU device, for steady timings)",
    )
    bench.set_defaults(run=cmd_bench)

    from streamguard.train.options import TrainOptions

    train = commands.add_parser(
        "train-a2v", help="train the A2V predictor on a folder of videos with the frozen backbone"
    )
    train.add_argument(
        "video_dir", type=Path, help="a folder of video files with audio (searched recursively)"
    )
    train.add_argument("--config", default="default", help="a config name under configs/ or a YAML path")
    train.add_argument("--model", help=MODEL_HELP)
    train.add_argument(
        "--out", type=Path, required=True, help="folder for the predictor, checkpoints and report"
    )
    train.add_argument("--cache", type=Path, help="feature cache folder (default: OUT/features)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    for flag, kind, name, what in _TRAIN_FLAGS:
        default = getattr(TrainOptions, name)
        train.add_argument(
            flag, type=kind, dest=name, help=what if default is None else f"{what} (default {default})"
        )
    train.set_defaults(run=cmd_train_a2v)

    from streamguard.eval.datasets import FORMATS

    evaluate = commands.add_parser(
        "eval", help="multiple-choice AV questions through the streaming path: accuracy, compression, KL"
    )
    evaluate.add_argument("dataset", type=Path, help="a JSON/JSONL (or Video-MME Parquet) question file")
    evaluate.add_argument("--config", default="default", help="a config name under configs/ or a YAML path")
    evaluate.add_argument("--model", help=MODEL_HELP)
    evaluate.add_argument("--out", type=Path, required=True, help="folder for results.jsonl and summary.json")
    methods = evaluate.add_mutually_exclusive_group()
    methods.add_argument(
        "--method", default="contextguard", help="the pruning method (default contextguard; see docs/eval.md)"
    )
    methods.add_argument(
        "--methods", type=lambda text: text.split(","), help="several methods, comma-separated"
    )
    evaluate.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    evaluate.add_argument(
        "--video-root", type=Path, help="where video paths start (default: the dataset's folder)"
    )
    evaluate.add_argument("--limit", type=int, help="only the first N questions")
    evaluate.add_argument(
        "--resume", action="store_true", help="continue the run in --out, skipping answered questions"
    )
    evaluate.add_argument(
        "--max-new-tokens", type=int, default=32, help="length of the generated text kept beside the choice"
    )
    evaluate.set_defaults(run=cmd_eval)

    serve = commands.add_parser("serve", help="run the service: REST, websocket questions, /metrics")
    serve.add_argument(
        "--config",
        help="a config name under configs/ or a YAML path (default: `default` on a CUDA GPU, else `tiny`)",
    )
    serve.add_argument("--model", help=MODEL_HELP)
    serve.add_argument("--host", help="bind address (default: service.host)")
    serve.add_argument("--port", type=int, help="port (default: service.port)")
    serve.set_defaults(run=cmd_serve)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="the service (default: http://service.host:service.port of --config)")
    client.add_argument(
        "--token", help=f"bearer token (default: ${TOKEN_ENV}, else the config's first token)"
    )
    client.add_argument("--config", default="default", help="config for the default URL and token")

    ask = commands.add_parser(
        "ask", parents=[client], help="ask a running stream a question, print the answer as it arrives"
    )
    ask.add_argument("stream", help="the stream id (see `streamguard streams`)")
    ask.add_argument("question")
    ask.add_argument("--max-tokens", type=int, help="cap on the answer's tokens")
    ask.set_defaults(run=cmd_ask)

    streams = commands.add_parser(
        "streams", parents=[client], help="list the service's streams and their stats"
    )
    streams.add_argument("--json", action="store_true", help="print the raw JSON")
    streams.set_defaults(run=cmd_streams)
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
