"""A2V predictor training (paper App. A): per-chunk features from videos, the loop, retrieval metrics.

`train_a2v` is what `streamguard train-a2v` runs; the pieces are usable on their own:
`extract_features` (features.py), `train_predictor` (trainer.py), `retrieval_metrics` (retrieval.py).
"""

from __future__ import annotations

from streamguard.train.features import (
    ExtractionResult,
    FeatureCacheMismatchError,
    NoUsableVideosError,
    NoVideosError,
    VideoFeatures,
    extract_features,
    find_videos,
)
from streamguard.train.job import TrainRun, train_a2v
from streamguard.train.options import TrainOptions
from streamguard.train.retrieval import RetrievalMetrics, retrieval_metrics
from streamguard.train.trainer import TrainingStateError, TrainResult, train_predictor

__all__ = [
    "ExtractionResult",
    "FeatureCacheMismatchError",
    "NoUsableVideosError",
    "NoVideosError",
    "RetrievalMetrics",
    "TrainOptions",
    "TrainResult",
    "TrainRun",
    "TrainingStateError",
    "VideoFeatures",
    "extract_features",
    "find_videos",
    "retrieval_metrics",
    "train_a2v",
    "train_predictor",
]
