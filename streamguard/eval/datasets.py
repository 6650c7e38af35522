"""Multiple-choice audio-visual QA sets: the common schema, and adapters for published benchmarks.

The common ("streamguard") schema is a JSON list or a JSONL file of records

    {"video": "clips/a.mp4", "question": "...", "options": ["...", "..."], "answer": "B",
     "id": "q1", "task": "counting"}

`answer` is a letter ("B"), a 0-based index (1) or the text of an option; `id` and `task` (or
`category`) are optional. Adapters read the files the benchmarks publish, field for field
(docs/eval.md lists them); every one ends in the same `EvalItem`. Video paths are relative to
the video root (default: the dataset file's folder), also looked for in its `videos/`,
`Videos/`, `video/` and `data/` folders, where the benchmarks unpack them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
VIDEO_FOLDERS = ("", "videos", "Videos", "video", "data")
# "A. text", "A.text", "(A) text", "A) text", "A: text": an option that carries its own letter.
_LABELLED = re.compile(r"^\s*\(?([A-Z])(?:[.:)]|\)\.?)\s*(.*)$", re.DOTALL)
_LETTER = re.compile(r"^\(?([A-Z])\)?\.?$")


class DatasetError(ValueError):
    """A dataset file that cannot be read, matches no adapter, or has a malformed record."""


@dataclass(frozen=True)
class EvalItem:
    """One question in the common schema, its answer an index into `options`."""

    id: str
    video: Path
    question: str
    options: tuple[str, ...]
    answer: int
    task: str | None = None

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass(frozen=True)
class Record:
    """One raw record and where it sits in its file, for error messages."""

    where: str  # "line 7", "record 3", "video 'abc' task1"
    data: Any

    def field(self, name: str, fmt: str) -> Any:
        if not isinstance(self.data, dict):
            raise DatasetError(f"{self.where}: expected an object, got {type(self.data).__name__}")
        if name not in self.data or self.data[name] is None:
            raise DatasetError(f"{self.where}: missing field {name!r} (the {fmt} format needs it)")
        return self.data[name]

    def optional(self, *names: str) -> Any:
        if not isinstance(self.data, dict):
            return None
        return next((self.data[n] for n in names if self.data.get(n) is not None), None)


@dataclass(frozen=True)
class RawItem:
    """What an adapter read from one record, before validation and normalisation."""

    where: str
    id: Any
    video: Any  # a path relative to the video root
    question: Any
    options: Any
    answer: Any
    task: Any = None


Document = list[Record] | dict[str, Any]  # a list of records, or a JSON object keyed by id
Adapter = Callable[[Document], Iterator[RawItem]]


# -- reading files -----------------------------------------------------------------------------


def read_document(path: Path) -> Document:
    """A JSON file (list or object), a JSONL file, or a Parquet table (needs pyarrow)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such dataset file: {path}")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if path.suffix == ".json":
            raise DatasetError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return _read_jsonl(path, text)  # an unnamed file: JSONL is the other text form
    if isinstance(value, list):
        return [Record(f"record {n}", data) for n, data in enumerate(value, 1)]
    if isinstance(value, dict):
        return value
    raise DatasetError(f"{path}: expected a list or an object of records, got {type(value).__name__}")


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(Record(f"line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line {n}: invalid JSON ({exc.msg})") from None
    return records


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DatasetError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or export the table to JSONL"
        ) from None
    rows = parquet.read_table(path).to_pylist()
    return [Record(f"row {n}", row) for n, row in enumerate(rows, 1)]


# -- adapters ----------------------------------------------------------------------------------


def _records(document: Document, fmt: str) -> list[Record]:
    if isinstance(document, dict):
        raise DatasetError(f"a {fmt} file is a list of records, not an object keyed by id")
    return document


def streamguard_items(document: Document) -> Iterator[RawItem]:
    for r in _records(document, "streamguard"):
        yield RawItem(
            r.where,
            r.optional("id"),
            r.field("video", "streamguard"),
            r.field("question", "streamguard"),
            r.field("options", "streamguard"),
            r.field("answer", "streamguard"),
            r.optional("task", "category"),
        )


def daily_omni_items(document: Document) -> Iterator[RawItem]:
    """Daily-Omni qa.json: a list (or an object keyed "Entry_N") of {Question, Choice, Answer,
    video_id, Type}; videos at Videos/<video_id>/<video_id>_video.mp4."""
    if isinstance(document, dict):
        records = [Record(f"entry {key!r}", value) for key, value in document.items()]
        ids = list(document)
    else:
        records, ids = document, [None] * len(document)
    for key, r in zip(ids, records, strict=True):
        video_id = r.field("video_id", "daily-omni")
        yield RawItem(
            r.where,
            key,
            f"{video_id}/{video_id}_video.mp4",
            r.field("Question", "daily-omni"),
            r.field("Choice", "daily-omni"),
            r.field("Answer", "daily-omni"),
            r.optional("Type"),
        )


def worldsense_items(document: Document) -> Iterator[RawItem]:
    """WorldSense worldsense_qa.json: {video: {duration, domain, ..., task1: {question, candidates,
    answer, task_domain, task_type}, task2: ...}}; videos at videos/<video>.mp4."""
    if not isinstance(document, dict):
        raise DatasetError("a worldsense file is an object keyed by video id, not a list")
    for video, tasks in document.items():
        if not isinstance(tasks, dict):
            raise DatasetError(f"video {video!r}: expected an object of tasks, got {type(tasks).__name__}")
        for key in (k for k in tasks if k.startswith("task")):
            r = Record(f"video {video!r} {key}", tasks[key])
            yield RawItem(
                r.where,
                f"{video}/{key}",
                f"{video}.mp4",
                r.field("question", "worldsense"),
                r.field("candidates", "worldsense"),
                r.field("answer", "worldsense"),
                r.optional("task_type", "task_domain"),
            )


def video_mme_items(document: Document) -> Iterator[RawItem]:
    """Video-MME (lmms-lab/Video-MME videomme/test-*.parquet, or its rows as JSON/JSONL):
    {videoID, question_id, question, options, answer, task_type}; videos at data/<videoID>.mp4."""
    for r in _records(document, "video-mme"):
        yield RawItem(
            r.where,
            r.optional("question_id"),
            f"{r.field('videoID', 'video-mme')}.mp4",
            r.field("question", "video-mme"),
            r.field("options", "video-mme"),
            r.field("answer", "video-mme"),
            r.optional("task_type"),
        )


def avqa_items(document: Document) -> Iterator[RawItem]:
    """AVQA train_qa.json / val_qa.json: {id, video_name, question_text, multi_choice, answer
    (0-based index), question_type}; videos at <video_name>.mp4."""
    for r in _records(document, "avqa"):
        yield RawItem(
            r.where,
            r.optional("id"),
            f"{r.field('video_name', 'avqa')}.mp4",
            r.field("question_text", "avqa"),
            r.field("multi_choice", "avqa"),
            r.field("answer", "avqa"),
            r.optional("question_type"),
        )


def omnivideobench_items(document: Document) -> Iterator[RawItem]:
    """OmniVideoBench data.json: [{video, duration, questions: [{question, options, correct_option,
    question_type}]}]; videos at <video>.mp4."""
    for r in _records(document, "omnivideobench"):
        video = r.field("video", "omnivideobench")
        questions = r.field("questions", "omnivideobench")
        if not isinstance(questions, list):
            raise DatasetError(f"{r.where}: 'questions' must be a list")
        for k, data in enumerate(questions, 1):
            q = Record(f"{r.where} question {k}", data)
            yield RawItem(
                q.where,
                f"{video}/{k}",
                f"{video}.mp4",
                q.field("question", "omnivideobench"),
                q.field("options", "omnivideobench"),
                q.field("correct_option", "omnivideobench"),
                q.optional("question_type"),
            )


ADAPTERS: dict[str, Adapter] = {
    "streamguard": streamguard_items,
    "daily-omni": daily_omni_items,
    "worldsense": worldsense_items,
    "video-mme": video_mme_items,
    "avqa": avqa_items,
    "omnivideobench": omnivideobench_items,
}
FORMATS = tuple(ADAPTERS)

# The fields that give each format away, checked in order on the first record.
_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("daily-omni", frozenset({"Question", "Choice", "Answer"})),
    ("avqa", frozenset({"question_text", "multi_choice"})),
    ("video-mme", frozenset({"videoID", "options"})),
    ("omnivideobench", frozenset({"video", "questions"})),
    ("streamguard", frozenset({"video", "question", "options", "answer"})),
)


def detect_format(document: Document) -> str:
    """The adapter whose fields the document's first record has."""
    if isinstance(document, dict):
        first = next(iter(document.values()), None)
        if isinstance(first, dict) and any(k.startswith("task") for k in first):
            return "worldsense"
    else:
        first = document[0].data if document else None
    if not isinstance(first, dict):
        found = "nothing" if first is None else f"a {type(first).__name__}"
        raise DatasetError(f"matches no adapter: expected question records (JSON objects), found {found}")
    for name, fields in _SIGNATURES:
        if fields <= first.keys():
            return name
    expected = "; ".join(f"{name}: {', '.join(sorted(f))}" for name, f in _SIGNATURES)
    raise DatasetError(
        f"matches no adapter: the first record has fields {sorted(first)}; expected {expected} "
        "(or a worldsense object of videos with task1.. entries); see docs/eval.md or pass --format"
    )


# -- normalising -------------------------------------------------------------------------------


def load_dataset(
    path: str | Path, fmt: str = "auto", video_root: str | Path | None = None
) -> tuple[str, list[EvalItem]]:
    """The dataset's items in file order, and the format they were read as."""
    path = Path(path)
    document = read_document(path)
    try:
        if fmt == "auto":
            fmt = detect_format(document)
        if fmt not in ADAPTERS:
            raise DatasetError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
        root = Path(video_root) if video_root is not None else path.parent
        items = [to_item(raw, n, root) for n, raw in enumerate(ADAPTERS[fmt](document), 1)]
        if not items:
            raise DatasetError("no questions in the file")
        _check_unique_ids(items)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    return fmt, items


def to_item(raw: RawItem, number: int, video_root: Path) -> EvalItem:
    """Validate a raw item: text fields, 2..26 options, an answer naming one of them."""
    for name in ("video", "question"):
        value = getattr(raw, name)
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{raw.where}: {name!r} must be a non-empty string, got {value!r}")
    options = normalize_options(raw.options, raw.where)
    return EvalItem(
        id=str(raw.id) if raw.id is not None else str(number),
        video=locate_video(video_root, raw.video),
        question=raw.question.strip(),
        options=options,
        answer=answer_index(raw.answer, options, raw.options, raw.where),
        task=None if raw.task is None else str(raw.task),
    )


def normalize_options(options: Any, where: str) -> tuple[str, ...]:
    """The options' texts; labels ("A. ", "(B) ") are stripped when every option carries its own."""
    if not isinstance(options, list | tuple) or not all(isinstance(o, str) for o in options):
        raise DatasetError(f"{where}: 'options' must be a list of strings, got {options!r}")
    if not 2 <= len(options) <= len(LETTERS):
        raise DatasetError(f"{where}: expected 2 to {len(LETTERS)} options, got {len(options)}")
    matches = [_LABELLED.match(o) for o in options]
    if all(m is not None and m.group(1) == LETTERS[k] for k, m in enumerate(matches)):
        return tuple(m.group(2).strip() for m in matches if m is not None)
    return tuple(o.strip() for o in options)


def answer_index(answer: Any, options: tuple[str, ...], raw_options: list[str], where: str) -> int:
    """A letter, a 0-based index, or an option's text (as given or without its label) → index."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(options):
            return answer
    elif isinstance(answer, str):
        text = answer.strip()
        letter = _LETTER.match(text)
        if letter is not None and LETTERS.index(letter.group(1)) < len(options):
            return LETTERS.index(letter.group(1))
        for texts in (options, [o.strip() for o in raw_options]):
            folded = [t.casefold() for t in texts]
            if text.casefold() in folded:
                return folded.index(text.casefold())
    raise DatasetError(
        f"{where}: answer {answer!r} is not a letter A-{LETTERS[len(options) - 1]}, "
        f"an index 0-{len(options) - 1} or the text of an option"
    )


def locate_video(root: Path, relative: str) -> Path:
    """`relative` under `root` or one of its usual video folders; the plain join when none has it
    (the runner reports it missing)."""
    path = Path(relative)
    if path.is_absolute():
        return path
    for folder in VIDEO_FOLDERS:
        candidate = root / folder / path
        if candidate.is_file():
            return candidate
    return root / path


def _check_unique_ids(items: list[EvalItem]) -> None:
    # Results are resumed by (id, method): two questions under one id would shadow each other.
    seen: dict[str, int] = {}
    for n, item in enumerate(items, 1):
        if item.id in seen:
            raise DatasetError(f"question {n}: id {item.id!r} repeats question {seen[item.id]}'s")
        seen[item.id] = n
