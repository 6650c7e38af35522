"""`streamguard train-a2v` as a library call: features (cached), training, report.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamguard.backbones import Backbone, load_backbone
from streamguard.config import Settings
from streamguard.train import atomic
from streamguard.train.features import ExtractionResult, extract_features, find_videos
from streamguard.train.options import TrainOptions
from streamguard.train.report import REPORT_FILE, build_report
from streamguard.train.trainer import TrainResult, check_state_backbone, expect_run_folder, train_predictor


@dataclass
class TrainRun:
    features: ExtractionResult
    result: TrainResult
    report: dict[str, Any]
    report_path: Path


def train_a2v(
    video_dir: str | Path,
    settings: Settings,
    out: str | Path,
    options: TrainOptions | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    backbone: Backbone | None = None,
) -> TrainRun:
    """Extract (or reuse) features of the videos under `video_dir` with the settings' frozen
    backbone, train a predictor into `out`, write `out`/report.json. The feature cache defaults
    to `out`/features; progress bars go to `console` when one is given."""
    video_dir, out = Path(video_dir), Path(out)
    options = options or TrainOptions()
    # Checked before the model loads, so a wrong folder fails at once.
    find_videos(video_dir)
    state = expect_run_folder(out, resume)
    if backbone is None:
        backbone = load_backbone(settings.model, settings.chunk)
    if state is not None:
        check_state_backbone(state, out, backbone.model_id, backbone.hidden_size)
    cache = Path(cache_dir) if cache_dir is not None else out / "features"
    with _progress(console) as progress:
        features = extract_features(video_dir, backbone, settings, cache, progress)
        result = train_predictor(
            features.videos,
            backbone.model_id,
            backbone.hidden_size,
            options,
            out,
            resume=resume,
            device=backbone.device,
            progress=progress,
        )
    report = build_report(
        video_dir, cache, backbone.model_id, backbone.hidden_size, options, features, result
    )
    report_path = out / REPORT_FILE
    atomic.write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
    return TrainRun(features, result, report, report_path)


@contextmanager
def _progress(console: Console | None) -> Iterator[Progress | None]:
    if console is None:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield progress
