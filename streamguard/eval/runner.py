"""`streamguard eval`: multiple-choice AV questions answered through the streaming path.

Each video is decoded chunk by chunk and every chunk is encoded once; the features feed one
stream pipeline per method (the full-token one always among them: it is the KL reference), in
lockstep, as fast as they go. At the end of the video each of its questions is asked of every
method's session. The answer is the option letter with the highest next-token logit; the
greedy generated text is kept beside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamguard.backbones import Backbone, load_backbone
from streamguard.bench.workload import FULL, ONLINE_METHODS, Method
from streamguard.config import Settings, load_settings
from streamguard.engine.fidelity import first_token_kl
from streamguard.engine.pipeline import ChunkPipeline, ChunkReport, create_pipeline, encode_chunk
from streamguard.engine.replay import summarize_replay
from streamguard.engine.session import EmptyQuestionError, QuestionTooLongError, SamplingParams
from streamguard.eval.datasets import LETTERS, EvalItem, load_dataset
from streamguard.eval.prompt import choose, letter_token_ids, question_prompt
from streamguard.eval.report import summarize
from streamguard.eval.results import ResultsLog
from streamguard.ingest import MediaError
from streamguard.ingest.files import iter_chunks
from streamguard.pruning.a2v import fallback_warnings_muted

SUMMARY_FILE = "summary.json"
# "contextguard" streams with the config's drop policy; the rest are the bench's online methods.
METHODS: dict[str, Method] = {m.name: m for m in ONLINE_METHODS} | {
    "contextguard": Method("contextguard", "contextguard", None)
}
# What a replay's summary contributes to each result line.
COMPRESSION_KEYS = (
    "chunks",
    "video_tokens_in",
    "video_tokens_kept",
    "input_tokens",
    "input_tokens_kept",
    "video_tokens_pruned_pct",
    "input_tokens_pruned_pct",
    "chunks_video_dropped",
    "kv_tokens",
)


@dataclass(frozen=True)
class EvalOptions:
    dataset: Path
    out: Path
    config: str
    methods: tuple[str, ...] = ("contextguard",)
    format: str = "auto"
    video_root: Path | None = None
    limit: int | None = None
    resume: bool = False
    model: str | None = None  # overrides model.path
    max_new_tokens: int = 32  # of the generated text kept beside the letter choice


def resolve_methods(names: Sequence[str]) -> list[Method]:
    """The named methods, in order, each once."""
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or names!r}; expected some of {', '.join(METHODS)}")
    return [METHODS[name] for name in dict.fromkeys(names)]


def run_eval(options: EvalOptions, console: Console) -> dict[str, Any]:
    """Answer every question not yet in DIR/results.jsonl, then write DIR/summary.json."""
    started = time.perf_counter()
    methods = resolve_methods(options.methods)
    if options.limit is not None and options.limit <= 0:
        raise ValueError(f"--limit must be positive, got {options.limit}")
    fmt, items = load_dataset(options.dataset, options.format, options.video_root)
    items = items[: options.limit]
    settings = load_settings(options.config, **({"model": {"path": options.model}} if options.model else {}))
    log = ResultsLog(options.out, options.resume)
    scored = log.scored_pairs()
    with console.status(f"loading {settings.model.path}"):
        backbone = load_backbone(settings.model, settings.chunk)
    if not settings.pruning.predictor_path:
        console.print(
            "[yellow]No A2V predictor configured: ContextGuard scores video against the mean audio "
            "embedding (the paper's weaker 'orig' reference).[/yellow]"
        )
    letter_ids = letter_token_ids(backbone, max(len(item.options) for item in items))
    replay = VideoReplay(backbone, settings, letter_ids, options.max_new_tokens)
    tried = 0
    columns = (
        TextColumn("{task.description:<24.24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with fallback_warnings_muted(), Progress(*columns, console=console) as progress:
        bar = progress.add_task("questions", total=len(items))
        for video, group in _by_video(items):
            pending = {i.id: [m for m in methods if (i.id, m.name) not in scored] for i in group}
            todo = [item for item in group if pending[item.id]]
            progress.advance(bar, len(group) - len(todo))
            if not todo:
                continue
            progress.update(bar, description=video.name)
            for records in replay.answer(video, todo, pending):
                for record in records:
                    log.append(record)
                tried += 1
                progress.advance(bar)
    summary = summarize(log.records(), items, [m.name for m in methods])
    summary["run"] = {
        "dataset": str(options.dataset),
        "format": fmt,
        "config": options.config,
        "model": settings.model.path,
        "device": str(backbone.device),
        "pruning": settings.pruning.model_dump(),
        "questions_tried_this_run": tried,
        "duration_s": time.perf_counter() - started,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = Path(options.out)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _by_video(items: list[EvalItem]) -> list[tuple[Path, list[EvalItem]]]:
    """Items grouped by video, in order of first appearance: a video is streamed once for all
    its questions."""
    groups: dict[Path, list[EvalItem]] = {}
    for item in items:
        groups.setdefault(item.video, []).append(item)
    return list(groups.items())


class VideoReplay:
    """One video streamed through every method's pipeline, then its questions asked of each."""

    def __init__(self, backbone: Backbone, settings: Settings, letter_ids: list[int], max_new_tokens: int):
        self.backbone = backbone
        self.settings = settings
        self.letter_ids = letter_ids
        self.sampling = SamplingParams(max_new_tokens, temperature=0.0)

    def answer(
        self, video: Path, items: list[EvalItem], pending: dict[str, list[Method]]
    ) -> Iterator[list[dict[str, Any]]]:
        """The result lines of each item in turn (errors included: a broken video fails them all)."""
        needed = {FULL.name: FULL} | {m.name: m for item in items for m in pending[item.id]}
        try:
            pipelines, reports = self._stream(video, needed)
        except (OSError, MediaError) as exc:
            for item in items:
                yield [error_record(item, method, _reason(exc)) for method in pending[item.id]]
            return
        # No elapsed time: the pipelines ran interleaved, and eval reports no speed.
        compression = {
            name: summarize_replay(reports[name], pipeline.session, 0.0, self.settings.chunk.seconds)
            for name, pipeline in pipelines.items()
        }
        for item in items:
            yield self._ask(item, pending[item.id], pipelines, compression)

    def _stream(
        self, video: Path, methods: dict[str, Method]
    ) -> tuple[dict[str, ChunkPipeline], dict[str, list[ChunkReport]]]:
        pipelines = {
            name: create_pipeline(self.backbone, m.settings(self.settings)) for name, m in methods.items()
        }
        reports: dict[str, list[ChunkReport]] = {name: [] for name in methods}
        for chunk in iter_chunks(video, self.settings.chunk):
            encoded = encode_chunk(self.backbone, chunk)  # once, for every method
            for name, pipeline in pipelines.items():
                reports[name].append(pipeline.process_encoded(encoded))
        if not reports[FULL.name]:
            raise MediaError(f"{video}: no chunk could be cut from this file")
        return pipelines, reports

    def _ask(
        self,
        item: EvalItem,
        methods: list[Method],
        pipelines: dict[str, ChunkPipeline],
        compression: dict[str, dict[str, Any]],
    ) -> list[dict[str, Any]]:
        prompt = question_prompt(item)
        letter_ids = self.letter_ids[: len(item.options)]
        try:
            reference = pipelines[FULL.name].session.question_logits(prompt)[-1]
        except (QuestionTooLongError, EmptyQuestionError) as exc:
            return [error_record(item, method, _reason(exc)) for method in methods]
        records = []
        for method in methods:
            session = pipelines[method.name].session
            logits = reference if method.name == FULL.name else session.question_logits(prompt)[-1]
            choice = choose(logits, letter_ids)
            records.append(
                _base_record(item, method)
                | {
                    "prediction": choice.letter,
                    "correct": choice.index == item.answer,
                    "option_probs": dict(zip(LETTERS, choice.probs, strict=False)),
                    "text": session.answer(prompt, self.sampling),
                    "kl_vs_full": first_token_kl(reference, logits),
                }
                | {key: compression[method.name][key] for key in COMPRESSION_KEYS}
            )
        return records


def _base_record(item: EvalItem, method: Method) -> dict[str, Any]:
    return {
        "id": item.id,
        "method": method.name,
        "task": item.task,
        "video": str(item.video),
        "answer": item.answer_letter,
    }


def error_record(item: EvalItem, method: Method, reason: str) -> dict[str, Any]:
    """A result line for a question that could not be asked, with the reason."""
    return _base_record(item, method) | {"error": reason}


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
