"""The pixel pre-filter: say a chunk repeats the kept scene BEFORE the vision encoder runs.

Why: the online drop rule (temporal.py) compares mean video embeddings, so a redundant chunk
pays the whole vision tower (~92% of a dropped chunk's cost at 7B) before its video is thrown
away. On a static camera most chunks are redundant, and a few thousand pixel operations can
tell. When this filter is confident the chunk is unchanged the encoder is skipped (the chunk's
audio is still appended); when it is not, the encoder runs and the embedding rule decides.

The signature, and why this one:
- per sampled frame, a small RGB thumbnail (`cols * cell_pixels` x `rows * cell_pixels`, 64x36
  by default) made by AREA averaging: at 640x360 one thumbnail pixel is the mean of 100 sensor
  pixels, so σ=3 sensor noise falls to 0.3 levels and H.264 block noise and keyframe pulsing
  mostly average away (~1 level measured), while anything of a cell's size still moves its
  pixels by its full contrast. Three channels, not luma alone: an object as bright as the
  background but of another colour still shows;
- decisions per CELL (16x9 by default, the mean |difference| over a cell's 4x4x3 values), not
  per frame: an object of 2% of the frame (a person at 20 m; 48x96 px at 640x360) covers most
  of one or two 40x40-px cells, a change of tens of levels, where a frame-wide statistic would
  dilute it fifty-fold into the noise. Per-cell decisions also let a small region that always
  changes (a clock overlay) be masked without going blind elsewhere: a cell that changed against
  the previous chunk in `mask_after` of the last `mask_window` chunks is ignored, as long as no
  more than `max_masked_fraction` of the cells are (a seconds digit is masked after three
  chunks, a tens-of-seconds digit after three changes, 20-30 s);
- exposure normalised: each frame's gain and offset are fitted onto the reference (least
  squares over values clipped in neither, refitted without its worst 10% so an object or the
  clock does not bend the fit), and since the sensor clips the difference is taken both ways
  (clipped to 0..255) and the smaller kept: slow auto-exposure drift is no change.

Compared with the last frame of the last chunk whose video was KEPT (what the cache saw last of
the scene), every sampled frame of the chunk, so an object entering in its last frame counts.
The verdict (`Screening.action`):
- "skip": no unmasked cell changed: the vision encoder is not called, the video counts as dropped;
- "keep": a few cells changed (at most `max_local_fraction` of them: something entered), or the
  camera switched between colour and grey (IR night mode): the encoder runs and the video is kept
  whatever the embedding rule says, since a mean over hundreds of tokens barely moves for an
  object on 2% of them;
- "encode": in doubt (no reference, another frame size or frame count, an exposure step beyond
  `max_exposure_step` since the previous chunk, many cells changed as in a pan or a light switched
  on, or `max_skip_run` chunks skipped in a row): the encoder runs, the embedding rule decides.

Blind spots, bounded: masked cells (at most `max_masked_fraction` of the frame) and changes under
the thresholds; `max_skip_run` bounds how long either can last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streamguard.config import PrefilterSettings

Action = Literal["skip", "keep", "encode"]

_TRIM = 0.1  # share of the worst-fitting thumbnail values left out of the exposure refit
_CLIPPED = (4.0, 251.0)  # thumbnail values at or beyond these are (nearly) clipped by the sensor


@dataclass(frozen=True)
class Signature:
    """A chunk's frames reduced for comparison."""

    thumbnails: np.ndarray  # (F, rows * cell, cols * cell, 3) float32 RGB area means, 0..255
    frame_shape: tuple[int, int]  # (H, W) of the frames they were made from

    def grey(self, below: float) -> bool:
        """A grey picture (IR night mode): its last frame's channels differ by under `below`
        levels on average."""
        last = self.thumbnails[-1]
        return float((last.max(axis=-1) - last.min(axis=-1)).mean()) < below


@dataclass(frozen=True)
class Screening:
    """The pre-filter's verdict on one chunk, before any encoder."""

    action: Action
    # unchanged | local_change | colour_mode | no_reference | frame_size | exposure_step |
    # global_change | max_skip_run
    reason: str
    changed_cells: int  # unmasked cells that differ from the reference
    masked_cells: int  # cells ignored as always changing
    signature: Signature
    history: np.ndarray  # (mask_window, rows, cols) bool: which cells changed in recent chunks
    ms: float  # what screening cost

    @property
    def skip(self) -> bool:
        return self.action == "skip"


def signature(frames: list[np.ndarray], settings: PrefilterSettings) -> Signature:
    """Thumbnails of a chunk's RGB uint8 frames (grey (H, W) frames are taken as R=G=B). Every
    frame gets the same thumbnail size, so a camera that changes resolution mid-chunk is compared
    too; the chunk's `frame_shape` is its first frame's, as the processor sizes the chunk."""
    size = (settings.rows * settings.cell_pixels, settings.cols * settings.cell_pixels)
    thumbnails = []
    for frame in frames:
        rgb = np.asarray(frame, dtype=np.float32)
        if rgb.ndim == 2:
            rgb = rgb[..., None]
        rgb = rgb[..., :3] if rgb.shape[-1] >= 3 else np.repeat(rgb[..., :1], 3, axis=-1)
        thumbnails.append(_area_mean(rgb, *size))
    return Signature(np.stack(thumbnails), tuple(frames[0].shape[:2]))


class Prefilter:
    """One stream's pre-filter state: the kept chunk's signature, the previous chunk's, which
    cells changed in recent chunks and the run of skipped chunks. `screen` decides and changes
    nothing; `record` then says what became of the chunk."""

    def __init__(self, settings: PrefilterSettings):
        self.settings = settings
        self._reference: Signature | None = None
        self._reference_chunk: int | None = None
        self._previous: Signature | None = None
        self._history = np.zeros((settings.mask_window, settings.rows, settings.cols), dtype=bool)
        self._skip_run = 0

    @property
    def reference_chunk(self) -> int | None:
        """Index of the chunk compared against (None before the first kept one, or after `reset`)."""
        return self._reference_chunk

    def reset(self) -> None:
        """Forget the reference (it is leaving the cache): the next chunk with video is encoded."""
        self._reference, self._reference_chunk = None, None

    def screen(self, frames: list[np.ndarray], current: Signature | None = None) -> Screening:
        """The verdict on a chunk's frames (at least one), against the kept and previous chunks;
        `current` is their `signature` when it was made ahead (off the model's worker)."""
        s, started = self.settings, time.perf_counter()
        current = current or signature(frames, s)
        history = self._next_history(current)
        masked = history.sum(axis=0) >= s.mask_after
        if masked.sum() > s.max_masked_fraction * masked.size:  # too much always changes: mask nothing
            masked[:] = False

        def verdict(action: Action, reason: str, changed: int = 0) -> Screening:
            ms = (time.perf_counter() - started) * 1000
            return Screening(action, reason, changed, int(masked.sum()), current, history, ms)

        reference, previous = self._reference, self._previous
        if reference is None:
            return verdict("encode", "no_reference")
        if (
            reference.thumbnails.shape != current.thumbnails.shape
            or reference.frame_shape != current.frame_shape
        ):
            return verdict("encode", "frame_size")
        if reference.grey(s.grey_below) != current.grey(s.grey_below):
            return verdict("keep", "colour_mode")
        changed = int((changed_cells(current, reference, s) & ~masked).sum())
        if changed > s.max_local_fraction * masked.size:
            return verdict("encode", "global_change", changed)
        if changed:
            return verdict("keep", "local_change", changed)
        # Unchanged once exposure is fitted: a jump of the gain is still no slow drift.
        if previous is not None and _exposure_step(previous, current) > s.max_exposure_step:
            return verdict("encode", "exposure_step")
        if self._skip_run >= s.max_skip_run:
            return verdict("encode", "max_skip_run")
        return verdict("skip", "unchanged")

    def record(self, screening: Screening, chunk: int, video_kept: bool) -> None:
        """After the chunk went through: its signature becomes the previous one, and the
        reference when its video entered the cache."""
        self._previous = screening.signature
        self._history = screening.history
        self._skip_run = self._skip_run + 1 if screening.skip else 0
        if video_kept:
            self._reference, self._reference_chunk = screening.signature, chunk

    def _next_history(self, current: Signature) -> np.ndarray:
        """The change history with this chunk's row (changed against the previous chunk) added."""
        previous = self._previous
        if previous is None or previous.thumbnails.shape[1:] != current.thumbnails.shape[1:]:
            now = np.zeros(self._history.shape[1:], dtype=bool)
        else:
            now = changed_cells(current, previous, self.settings)
        return np.concatenate([self._history[1:], now[None]])


def _exposure_step(previous: Signature, current: Signature) -> float:
    """How far the global gain moved since the previous chunk (0.1: 10%)."""
    gain, _ = _fit_exposure(current.thumbnails[-1], previous.thumbnails[-1])
    return abs(gain - 1.0)


def changed_cells(current: Signature, reference: Signature, settings: PrefilterSettings) -> np.ndarray:
    """(rows, cols) bool: cells where any current frame differs from the reference's last frame
    (what the cache saw last) by more than `change_threshold`, once exposure is fitted."""
    target = reference.thumbnails[-1]
    rows, cols, cell = settings.rows, settings.cols, settings.cell_pixels
    changed = np.zeros((rows, cols), dtype=bool)
    for thumbnail in current.thumbnails:
        difference = _exposure_fitted_difference(thumbnail, target)
        changed |= (
            difference.reshape(rows, cell, cols, cell, 3).mean(axis=(1, 3, 4)) > settings.change_threshold
        )
    return changed


def _exposure_fitted_difference(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """|image - target| per value, after fitting the image's gain and offset onto the target.

    The sensor clips: a value at 255 in one picture may stand for more. So the difference is
    taken both ways, the image mapped onto the target and the target back onto the image, each
    clipped to 0..255, and the smaller one kept: a region clipped in either picture that
    matches once clipped is no change, while anything new differs both ways."""
    gain, offset = _fit_exposure(image, target)
    forward = np.abs(np.clip(gain * image + offset, 0, 255) - target)
    backward = np.abs(np.clip((target - offset) / gain, 0, 255) - image) * gain
    return np.minimum(forward, backward)


def _fit_exposure(image: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Gain and offset taking `image` onto `target`: least squares over the values clipped in
    neither, then again without the worst `_TRIM` of them (a small changed region, the clock)."""
    x, y = image.ravel().astype(np.float64), target.ravel().astype(np.float64)
    low, high = _CLIPPED
    keep = (x > low) & (x < high) & (y > low) & (y < high)
    gain, offset = 1.0, 0.0
    for refit in (False, True):
        if refit:
            residual = np.abs(gain * x + offset - y)
            keep &= residual <= np.quantile(residual[keep], 1 - _TRIM)
        xs, ys = x[keep], y[keep]
        if xs.size < 2 or xs.var() < 1e-6:  # (nearly) flat or all clipped: no gain to fit
            return 1.0, 0.0
        gain = float(((xs - xs.mean()) * (ys - ys.mean())).mean() / xs.var())
        offset = float(ys.mean() - gain * xs.mean())
    return max(gain, 1e-3), offset  # a picture never turns negative


def _area_mean(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(H, W, C) -> (rows, cols, C): the mean of each of rows x cols near-equal areas."""
    height, width = image.shape[:2]
    if height < rows or width < cols:  # a frame smaller than the thumbnail: repeat its pixels first
        image = image.repeat(-(-rows // height), axis=0).repeat(-(-cols // width), axis=1)
        height, width = image.shape[:2]
    row_edges = np.linspace(0, height, rows + 1).astype(np.int64)
    col_edges = np.linspace(0, width, cols + 1).astype(np.int64)
    sums = np.add.reduceat(np.add.reduceat(image, row_edges[:-1], axis=0), col_edges[:-1], axis=1)
    areas = np.outer(np.diff(row_edges), np.diff(col_edges))[..., None]
    return (sums / areas).astype(np.float32)
