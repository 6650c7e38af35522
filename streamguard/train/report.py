"""The training report: report.json in the output folder and the tables printed at the end."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from streamguard.train.features import ExtractionResult
from streamguard.train.options import TrainOptions
from streamguard.train.trainer import TrainResult

REPORT_FILE = "report.json"
_FORMAT = "streamguard-a2v-report/1"


def build_report(
    video_dir: Path,
    cache_dir: Path,
    backbone_id: str,
    hidden_size: int,
    options: TrainOptions,
    features: ExtractionResult,
    result: TrainResult,
) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "backbone": {"id": backbone_id, "hidden_size": hidden_size},
        "video_dir": str(video_dir),
        "predictor_path": str(result.out),
        "options": asdict(options),
        "features": {
            "cache": str(cache_dir),
            "videos": len(features.videos),
            "chunks": features.num_chunks,
            "extracted": features.extracted,
            "reused": features.reused,
            "chunks_extracted": features.chunks_extracted,
            "skipped": features.skipped,
        },
        "split": {
            "train": result.train_videos,
            "val": result.val_videos,
            "train_chunks": result.train_chunks,
            "val_chunks": result.val_chunks,
        },
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "epochs": result.history,
        "retrieval": {"predictor": result.predictor.as_dict(), "mean_audio": result.mean_audio.as_dict()},
    }


def summary_tables(report: dict[str, Any]) -> list[Table]:
    """Losses per epoch, then validation retrieval of the predictor next to the mean-audio reference."""
    epochs = Table(title="A2V training (loss = 5·L_cos + L_ctr)")
    for name in (
        "epoch",
        "step",
        "train loss",
        "train L_cos",
        "train L_ctr",
        "val loss",
        "val R@1",
        "val MedR",
    ):
        epochs.add_column(name, justify="right")
    for record in report["epochs"]:
        epochs.add_row(
            str(record["epoch"]),
            str(record["step"]),
            f"{record['train_loss']:.4f}",
            f"{record['train_cos']:.4f}",
            f"{record['train_ctr']:.4f}",
            f"{record['val_loss']:.4f}",
            f"{record['val_retrieval']['r1']:.1f}",
            f"{record['val_retrieval']['medr']:g}",
        )
    retrieval = report["retrieval"]
    candidates = retrieval["predictor"]["candidates"]
    compare = Table(title=f"validation audio→video retrieval ({candidates} videos, App. A.2)")
    for name in ("reference", "R@1 %", "R@5 %", "MedR"):
        compare.add_column(name, justify="right")
    for label, key in (("mean audio (orig)", "mean_audio"), ("A2V predictor", "predictor")):
        metrics = retrieval[key]
        compare.add_row(label, f"{metrics['r1']:.1f}", f"{metrics['r5']:.1f}", f"{metrics['medr']:g}")
    return [epochs, compare]
