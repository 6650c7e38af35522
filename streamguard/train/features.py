"""A2V training pairs from a folder of videos: decode, run the frozen encoders, cache on disk.

Every usable video becomes, for each of its N 2-second chunks, the chunk's audio tokens and its
mean video token, both in the LLM embedding space: audio (N, L, d) and video (N, d).

The cache is a folder of one safetensors file per video, named by the SHA-256 of the file's
content (a renamed or copied video is not extracted again), plus a features.json recording what
the features depend on: the backbone, its hidden size, the chunk and pixel settings. A cache
folder made for another backbone or other settings is refused (`FeatureCacheMismatchError`),
never mixed. Each file is written under a temporary name and renamed into place, so a run that
is interrupted leaves only whole files and the next run extracts only the videos still missing.

Unusable files are skipped with a warning naming each one and why: files that cannot be opened
or decoded (corrupt, truncated), files without an audio track or without a video track, files
too short for a chunk. A file identical to another is used once. If no file is usable at all,
`NoUsableVideosError` lists every file with its reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from streamguard.backbones.base import Backbone
from streamguard.config import Settings
from streamguard.ingest import MediaError
from streamguard.ingest.files import iter_chunks, probe
from streamguard.pruning.a2v import backbone_name
from streamguard.train import atomic

log = logging.getLogger("streamguard.train")

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".flv", ".wmv", ".mpg", ".mpeg", ".ts", ".3gp", ".ogv"}
)
MANIFEST_FILE = "features.json"
_FORMAT = "streamguard-a2v-features/1"
# A chunk whose audio is mostly the chunker's silence padding (the file's audio ended or has a
# gap) pairs a picture with no sound: it would teach the predictor nothing, so it is left out.
MIN_AUDIO_COVERAGE = 0.5


class NoVideosError(ValueError):
    """The folder holds no file with a video suffix."""


class NoUsableVideosError(ValueError):
    """Video files were found, but every one was skipped."""


class FeatureCacheMismatchError(ValueError):
    """A feature cache folder made for another backbone or other chunk/pixel settings."""


class _UnusableVideo(Exception):
    """A video file that yields no training pair; the message says why."""


@dataclass(frozen=True)
class FeatureSpec:
    """What cached features depend on. The model's dtype is left out: bf16 and fp32 features of
    one checkpoint mean the same thing to the predictor."""

    backbone_id: str
    hidden_size: int
    chunk_seconds: float
    fps: float
    sample_rate: int
    min_pixels: int | None
    max_pixels: int | None

    @classmethod
    def of(cls, backbone: Backbone, settings: Settings) -> FeatureSpec:
        return cls(
            backbone_id=backbone.model_id,
            hidden_size=backbone.hidden_size,
            chunk_seconds=settings.chunk.seconds,
            fps=settings.chunk.fps,
            sample_rate=settings.chunk.sample_rate,
            min_pixels=settings.model.min_pixels,
            max_pixels=settings.model.max_pixels,
        )

    def same_features(self, other: FeatureSpec) -> bool:
        # A hub id and a local folder of one checkpoint are the same backbone (as for predictors).
        return replace(self, backbone_id=backbone_name(self.backbone_id)) == replace(
            other, backbone_id=backbone_name(other.backbone_id)
        )

    def describe(self) -> str:
        pixels = f"{self.min_pixels}..{self.max_pixels} pixels per frame"
        return (
            f"backbone {self.backbone_id!r} (hidden size {self.hidden_size}), {self.chunk_seconds:g} s chunks "
            f"at {self.fps:g} fps and {self.sample_rate} Hz, {pixels}"
        )


@dataclass
class VideoFeatures:
    """One video's training pairs: audio tokens (N, L, d) and mean video tokens (N, d) of N chunks."""

    name: str  # the file's path relative to the video folder
    audio: torch.Tensor
    video: torch.Tensor

    @property
    def num_chunks(self) -> int:
        return int(self.video.shape[0])


@dataclass
class ExtractionResult:
    videos: list[VideoFeatures]
    extracted: list[str] = field(default_factory=list)  # names run through the encoders this time
    reused: list[str] = field(default_factory=list)  # names read from the cache
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    chunks_extracted: int = 0

    @property
    def num_chunks(self) -> int:
        return sum(video.num_chunks for video in self.videos)


def find_videos(folder: str | Path) -> list[Path]:
    """Files under `folder` (recursively) with a video suffix, sorted by path."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"video folder {folder} does not exist")
    if not folder.is_dir():
        raise NoVideosError(f"{folder} is a file; train-a2v takes a folder of videos")
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise NoVideosError(
            f"no video files under {folder} (looked for {', '.join(sorted(VIDEO_SUFFIXES))}, recursively)"
        )
    return videos


def extract_features(
    video_dir: str | Path,
    backbone: Backbone,
    settings: Settings,
    cache_dir: str | Path,
    progress: Progress | None = None,
) -> ExtractionResult:
    """Training pairs for every usable video under `video_dir`, from the cache where it has them."""
    video_dir = Path(video_dir)
    paths = find_videos(video_dir)
    cache = FeatureCache(cache_dir, FeatureSpec.of(backbone, settings))
    result = ExtractionResult(videos=[])
    seen: dict[str, str] = {}  # content hash -> the first file's name
    task = progress.add_task("features", total=len(paths)) if progress is not None else None
    for path in paths:
        name = path.relative_to(video_dir).as_posix()
        if progress is not None and task is not None:
            progress.update(task, description=f"features ({result.num_chunks} chunks so far): {name}")
        digest = file_sha256(path)
        if digest in seen:
            _skip(result, name, f"the same content as {seen[digest]}; used once")
        elif (features := cache.load(digest, name)) is not None:
            result.videos.append(features)
            result.reused.append(name)
        else:
            try:
                features = _extract_video(path, name, backbone, settings)
            except (_UnusableVideo, MediaError) as exc:
                _skip(result, name, str(exc))
            else:
                cache.save(digest, features)
                result.videos.append(features)
                result.extracted.append(name)
                result.chunks_extracted += features.num_chunks
        seen.setdefault(digest, name)
        if progress is not None and task is not None:
            progress.advance(task)
    if not result.videos:
        reasons = "; ".join(f"{name}: {why}" for name, why in result.skipped.items())
        raise NoUsableVideosError(
            f"none of the {len(paths)} video file(s) under {video_dir} is usable: {reasons}"
        )
    return result


def _skip(result: ExtractionResult, name: str, why: str) -> None:
    result.skipped[name] = why
    log.warning("skipping %s: %s", name, why)


def _extract_video(path: Path, name: str, backbone: Backbone, settings: Settings) -> VideoFeatures:
    info = probe(path)
    if not info.has_audio:
        raise _UnusableVideo("no audio track (the predictor learns from audio)")
    if not info.has_video:
        raise _UnusableVideo("no video track (nothing to predict)")
    audio, video = [], []
    for chunk in iter_chunks(path, settings.chunk):
        if chunk.video_missing or chunk.audio_coverage < MIN_AUDIO_COVERAGE:
            continue
        with torch.inference_mode():
            encoded = backbone.encode(backbone.preprocess(chunk.frames, chunk.audio))
        audio.append(encoded.audio.cpu())
        video.append(encoded.video_flat.mean(dim=0).cpu())
    if not audio:
        raise _UnusableVideo(f"no {settings.chunk.seconds:g} s chunk with both audio and video")
    if len({tokens.shape for tokens in audio}) != 1:
        raise _UnusableVideo(
            f"its chunks have different audio token counts: {sorted({a.shape[0] for a in audio})}"
        )
    # Stacked outside inference mode: the result is an ordinary tensor that training may use.
    return VideoFeatures(name, torch.stack(audio), torch.stack(video))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class FeatureCache:
    """A folder of per-video feature files for one `FeatureSpec` (see the module docstring)."""

    def __init__(self, folder: str | Path, spec: FeatureSpec):
        self.folder = Path(folder)
        self.spec = spec
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / MANIFEST_FILE
        if manifest.is_file():
            self._check(manifest)
        else:
            atomic.write_bytes(
                manifest, (json.dumps({"format": _FORMAT, **asdict(spec)}, indent=2) + "\n").encode()
            )

    def _check(self, manifest: Path) -> None:
        try:
            recorded = json.loads(manifest.read_text())
            if recorded.pop("format") != _FORMAT:
                raise ValueError("unknown format")
            cached = FeatureSpec(**recorded)
        except (ValueError, KeyError, TypeError) as exc:
            raise FeatureCacheMismatchError(
                f"{manifest} is not a StreamGuard feature cache ({exc}); pass another --cache folder"
            ) from exc
        if not cached.same_features(self.spec):
            raise FeatureCacheMismatchError(
                f"the feature cache {self.folder} holds features of {cached.describe()}, but this run uses "
                f"{self.spec.describe()}; pass another --cache folder or delete this one"
            )

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.safetensors"

    def load(self, digest: str, name: str) -> VideoFeatures | None:
        """The cached features of the file with this content hash, None if not cached (or unreadable)."""
        path = self.path(digest)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
            return VideoFeatures(name, tensors["audio"], tensors["video"])
        except (SafetensorError, OSError, KeyError) as exc:
            log.warning("re-extracting %s: its cached features %s are unreadable (%s)", name, path, exc)
            return None

    def save(self, digest: str, features: VideoFeatures) -> None:
        tensors = {"audio": features.audio.contiguous(), "video": features.video.contiguous()}
        metadata: dict[str, Any] = {"format": _FORMAT, "source": features.name, "sha256": digest}
        with atomic.replacing(self.path(digest)) as temporary:
            save_file(tensors, temporary, metadata=metadata)
