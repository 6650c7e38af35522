"""DIR/results.jsonl: one line per (question, method), appended as each is answered.

A line is flushed as soon as it is written, so an interrupted run loses at most the line being
written; `--resume` skips every pair with a scored line. Errors are lines too (with an `error`
reason) and are tried again on resume: a video may have been fixed since.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"


class ExistingResultsError(ValueError):
    """The output folder holds a previous run's results and --resume was not given."""


class ResultsLog:
    """The results file of one output folder."""

    def __init__(self, folder: Path, resume: bool):
        self.path = Path(folder) / RESULTS_FILE
        if self.path.exists() and self.path.stat().st_size and not resume:
            raise ExistingResultsError(
                f"{self.path} already holds results: pass --resume to continue that run, or choose another --out"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        # A run killed mid-write leaves a line without its newline: cut it so appends stay whole.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def scored_pairs(self) -> set[tuple[str, str]]:
        """(question id, method) of every line without an error."""
        return {(r["id"], r["method"]) for r in self.records() if not r.get("error")}

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())


def latest(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last line for each (question id, method): a retried error is replaced by its retry."""
    return {(r["id"], r["method"]): r for r in records}
