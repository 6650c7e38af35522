"""A chunk's raw media in the form the Qwen processors take: RGB uint8 frames, mono float audio.

Shared by every backbone built on the Qwen2-VL video processor, so a chunk is normalised the
same way whichever model it goes to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamguard.config import ModelSettings


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """Grey (H, W) or (H, W, 1) and RGBA (H, W, 4) frames become RGB; uint8 is enforced."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"a video frame must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {frame.shape}"
        )
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    elif frame.shape[-1] == 4:
        frame = frame[..., :3]
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame


def to_mono_float(audio: np.ndarray | None, length: int) -> np.ndarray:
    """Mono float32 of exactly `length` samples: ints are scaled, channels averaged, short audio
    padded with silence, long audio cut."""
    if audio is None:
        return np.zeros(length, dtype=np.float32)
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:  # channels on the short axis
        audio = audio.mean(axis=0 if audio.shape[0] < audio.shape[1] else 1)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono or 2-D multi-channel; got shape {audio.shape}")
    out = np.zeros(length, dtype=np.float32)
    out[: min(length, audio.shape[0])] = audio[:length]
    return out


def resize_uint8(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def video_processor_kwargs(settings: ModelSettings) -> dict[str, Any]:
    """Call options for the Qwen2-VL video processor: the chunker already sampled the frames, and
    the per-frame pixel bounds come from the settings (None keeps the checkpoint's own)."""
    kwargs: dict[str, Any] = {"do_sample_frames": False, "cap_pixels_per_frame": False}
    if settings.min_pixels is not None and settings.max_pixels is not None:
        kwargs["size"] = {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels}
    return kwargs


def process_frames(
    video_processor: Any, frames: Sequence[np.ndarray], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """One chunk's frames through the video processor: (pixel_values_videos, video_grid_thw, the
    frame size after smart_resize)."""
    rgb = [to_rgb(f) for f in frames]
    height, width = rgb[0].shape[:2]
    if any(f.shape[:2] != (height, width) for f in rgb):
        # A resolution change mid-chunk (a camera renegotiating): the chunk takes its first
        # frame's size, as one video tensor must have one size.
        rgb = [resize_uint8(f, height, width) for f in rgb]
    out = video_processor(videos=[np.stack(rgb)], return_tensors="pt", **kwargs)
    grid = out["video_grid_thw"]
    patch = int(video_processor.patch_size)
    return out["pixel_values_videos"], grid, (int(grid[0, 1]) * patch, int(grid[0, 2]) * patch)
