"""The bench's inputs: the pruning methods compared, generated clips and their decoded chunks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamguard.config import ChunkSettings, Settings
from streamguard.ingest.chunker import AVChunk
from streamguard.ingest.files import iter_chunks
from streamguard.ingest.synthetic import Motion, write_clip

Tick = Callable[[], None]  # advances the bench's progress bar by one step


@dataclass(frozen=True)
class Method:
    """One pruning method as the stream pipeline runs it: a selection rule and a drop policy."""

    name: str
    pruning: str  # PruningSettings.method
    drop_policy: str | None  # None: the config's policy

    def settings(self, settings: Settings) -> Settings:
        """`settings` with this method's pruning."""
        update = {"method": self.pruning}
        if self.drop_policy is not None:
            update["drop_policy"] = self.drop_policy
        return settings.model_copy(update={"pruning": settings.pruning.model_copy(update=update)})


FULL = Method("full", "none", "off")
# The online methods, full tokens first: it is the reference of the fidelity figure.
ONLINE_METHODS: tuple[Method, ...] = (
    FULL,
    Method("random", "random", None),
    Method("high", "high", None),
    Method("mean_audio", "mean_audio", None),
    Method("contextguard_current", "contextguard", "current"),
    Method("contextguard_previous", "contextguard", "previous"),
)
OFFLINE_METHOD = "contextguard_offline"  # depth-score segments and merging over the whole clip


def configured_method(settings: Settings) -> Method:
    """The method the config streams with (ContextGuard when the config prunes nothing)."""
    if settings.pruning.method == "none":
        return next(m for m in ONLINE_METHODS if m.name == f"contextguard_{settings.pruning.drop_policy}")
    for method in ONLINE_METHODS:
        if method.pruning == settings.pruning.method and method.drop_policy in (
            None,
            settings.pruning.drop_policy,
        ):
            return method
    return Method(settings.pruning.method, settings.pruning.method, None)


@dataclass
class Clip:
    """A clip decoded into chunks once, replayed by every method."""

    name: str
    path: Path
    chunks: list[AVChunk]


# The generated clips: a camera on a still scene, and one watching objects move.
GENERATED: tuple[tuple[str, Motion], ...] = (("static", "static"), ("moving", "moving"))


def generated_clips(
    folder: Path, seconds: float, chunk: ChunkSettings, names: Collection[str] | None = None
) -> list[Clip]:
    """The static-camera and moving clips (those in `names`; None: both), 320×240 at 15 fps with a
    tone track, written to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        load_clip(
            name, write_clip(folder / f"{name}.mp4", seconds, width=320, height=240, motion=motion), chunk
        )
        for name, motion in GENERATED
        if names is None or name in names
    ]


CONCURRENCY_CLIP = "concurrency"  # the concurrency figure's source: a moving camera
CONCURRENCY_CLIP_SECONDS = 6.0  # looped: three distinct chunks are enough to keep the drop rule honest


def concurrency_clip(folder: Path, size: tuple[int, int, float], chunk: ChunkSettings) -> Clip:
    """A moving camera at `size` (width, height, fps) with a tone track, written to `folder`."""
    width, height, fps = size
    path = write_clip(
        folder / f"concurrency-{width}x{height}.mp4",
        CONCURRENCY_CLIP_SECONDS,
        width=width,
        height=height,
        fps=fps,
        motion="moving",
    )
    return load_clip(CONCURRENCY_CLIP, path, chunk)


def load_clip(name: str, path: Path, chunk: ChunkSettings) -> Clip:
    chunks = list(iter_chunks(path, chunk))
    if not chunks:
        raise ValueError(f"{path}: no chunk could be cut from this file")
    return Clip(name, Path(path), chunks)


def looped(chunks: Sequence[AVChunk], count: int, seconds_per_chunk: float) -> Iterator[AVChunk]:
    """`count` chunks of a stream that plays `chunks` over and over, numbered and timed as one stream."""
    for k in range(count):
        yield dataclasses.replace(
            chunks[k % len(chunks)], index=k, start=k * seconds_per_chunk, wallclock=time.monotonic()
        )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """Median, p95 and best of durations given in seconds, in milliseconds."""
    ms = [1000 * s for s in seconds]
    return {
        "median_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "min_ms": min(ms, default=None),
        "n": len(ms),
    }
