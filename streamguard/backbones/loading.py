"""Where a backbone's checkpoint lives and what it runs on: tiny and random builds, config checks,
devices, dtypes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from streamguard.backbones.base import BackboneError
from streamguard.backbones.packed_attention import PACKED, PACKED_SDPA, use_packed_attention
from streamguard.backbones.random_build import RANDOM_PREFIX, is_random_build, resolve_random
from streamguard.backbones.tiny import TINY_MARKER, TINY_PREFIX, resolve_tiny
from streamguard.config import ModelSettings

log = logging.getLogger("streamguard.backbones")

# Omni thinker checkpoints by config.json model type (a whole Omni model's or its thinker's alone).
THINKER_FAMILIES = {
    "qwen2_5_omni": "qwen2.5-omni",
    "qwen2_5_omni_thinker": "qwen2.5-omni",
    "qwen3_omni_moe": "qwen3-omni",
    "qwen3_omni_moe_thinker": "qwen3-omni",
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def attn_implementations(
    settings: ModelSettings, device: torch.device, dtype: torch.dtype, audio_tower_packs: bool = True
) -> dict[str, str]:
    """The attention of each sub-config (a sub-config left out keeps its own default, not the
    model's): `model.attn_implementation` for the language model, the vision tower's own
    (`vision_attention`), and for the audio tower the model's, or the packed attention where the
    vision tower's is packed and the model's is sdpa (the packed one is sdpa without the loop
    over its segments). `audio_tower_packs` False: an audio tower that attends without segments."""
    model = settings.attn_implementation
    vision = vision_attention(settings.vision_attn_implementation, device, dtype)
    audio = PACKED_SDPA if audio_tower_packs and vision == PACKED_SDPA and model == "sdpa" else model
    return {"": model, "text_config": model, "audio_config": audio, "vision_config": vision}


def loadable(implementations: dict[str, str]) -> dict[str, str]:
    """The implementations for `from_pretrained`: the packed attention loads as sdpa, then
    `use_packed_towers` switches to it (transformers would look for a flash kernel behind its
    name at load time)."""
    return {key: "sdpa" if value == PACKED_SDPA else value for key, value in implementations.items()}


def use_packed_towers(model: Any, implementations: dict[str, str]) -> None:
    """Switch the sub-configs asked to run the packed attention (its towers read their own)."""
    use_packed_attention(
        *(getattr(model.config, key) for key, value in implementations.items() if value == PACKED_SDPA)
    )


def vision_attention(asked: str, device: torch.device, dtype: torch.dtype) -> str:
    """The vision tower's attention. flash-attn's varlen kernel when asked (or "auto") and it can
    run: it needs CUDA, fp16/bf16 and the `flash-attn` package. Otherwise ("auto", or
    flash_attention_2 where it cannot run) the packed attention on torch SDPA: like flash, one
    call a layer over every window of the frame; "sdpa" keeps transformers' loop over the
    windows in Python."""
    from transformers.utils import is_flash_attn_2_available

    if asked == "sdpa":
        return "sdpa"
    if asked == PACKED:
        return PACKED_SDPA
    missing = [
        reason
        for reason, lacking in (
            ("no CUDA device", device.type != "cuda"),
            (f"dtype {str(dtype).removeprefix('torch.')}", dtype not in (torch.float16, torch.bfloat16)),
            ("flash-attn is not installed", not is_flash_attn_2_available()),
        )
        if lacking
    ]
    if not missing:
        return "flash_attention_2"
    if asked == "flash_attention_2":
        log.warning(
            "model.vision_attn_implementation asks for flash_attention_2 but %s: the vision tower "
            "runs %s (the same windows, attended on torch SDPA)",
            ", ".join(missing),
            PACKED,
        )
    return PACKED_SDPA


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def checkpoint_path(path: str) -> str:
    """The folder or hub id to load: `tiny:<backbone>` and `random:<model>` build (once) and name
    a cache folder."""
    if path.startswith(TINY_PREFIX):
        return resolve_tiny(path)
    if path.startswith(RANDOM_PREFIX):
        return resolve_random(path)
    return path


def has_random_weights(folder: str) -> bool:
    """A tiny or `random:` build: whatever the model answers is noise."""
    return is_random_build(folder) or (Path(folder) / TINY_MARKER).is_file()


def local_config(path: str) -> dict[str, Any] | None:
    """The config.json of a local checkpoint folder; None for a hub id, which from_pretrained resolves.

    A local path without a config.json fails here, clearly, rather than deep inside transformers.
    """
    folder = Path(path)
    looks_local = folder.is_absolute() or path.startswith(".") or folder.exists()
    if not looks_local:
        return None
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BackboneError(f"model path {path!r} has no config.json: not a transformers checkpoint folder")
    return json.loads(config_file.read_text())


def checkpoint_family(config: dict[str, Any]) -> str | None:
    """The backbone a checkpoint config belongs to (the `model.backbone` setting), None if neither.

    video-SALMONN 2+ saves its config as a `qwen2_5_vl` model carrying an extra `audio_config`
    (its Whisper encoder and window Q-Former); a plain Qwen2.5-VL has none.
    """
    model_type = config.get("model_type")
    if model_type in THINKER_FAMILIES:
        return THINKER_FAMILIES[model_type]
    if model_type == "qwen2_5_vl" and isinstance(config.get("audio_config"), dict):
        return "video-salmonn2+"
    return None


def check_family(path: str, config: dict[str, Any], backbone: str, needs: str) -> None:
    """Refuse a checkpoint of another family, naming the setting that would load it."""
    family = checkpoint_family(config)
    if family == backbone:
        return
    hint = f"; it is a {family} checkpoint: set model.backbone to {family}" if family else ""
    raise BackboneError(
        f"model path {path!r} holds a {config.get('model_type')!r} model; the {backbone} backbone "
        f"needs {needs}{hint}"
    )
