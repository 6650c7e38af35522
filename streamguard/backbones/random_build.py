"""`random:<model>`: a released architecture with random weights, for measuring cost without weights.

`model.path: random:qwen2.5-omni-7b` builds the released Qwen2.5-Omni-7B thinker's config
(`released.py`: every size, layer count, head count and token id of the published config.json),
writes it with a processor to a cache folder, and the backbone loads that folder the way it loads
a checkpoint: config and processor through `from_pretrained`; the weights alone are initialised in
place (`instantiate`). The answers are noise; what it measures is what the real model costs.

A layer override, `random:qwen2.5-omni-7b?layers=2,2,2` (text, vision, audio), keeps every width
and cuts the depth, so a CPU can push one chunk through at real width. A cut vision tower keeps
the released full-attention blocks that still exist and makes its last block full attention, as
the released tower's last block (31) is; a cut Qwen3-Omni tower keeps the deepstack blocks that
still exist (`?layers=1,9,1` keeps block 8, so one decoder layer takes deepstack features).

Builders are registered in `RANDOM_BUILDS` by name, each with the `model.backbone` it loads as;
another backbone adds its released sizes by adding an entry (a `RandomBuild` whose `write` puts a
config and a processor in a folder).

Why no saved weights: the 7B thinker is 8.9 B parameters, 17.8 GB of random bf16 to write and read
back (3B: 11 GB) for no information; initialising in place on the target device takes seconds and
needs no disk. Everything that shapes the model still goes through save_pretrained/from_pretrained.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamguard.backbones import released
from streamguard.backbones.tiny import (
    NAMED_TOKENS,
    OTHER_TOKENS,
    SALMONN_AUDIO_TOKEN,
    SALMONN_SPECIAL_TOKENS,
    build_tiny_processor,
    build_tiny_tokenizer,
    default_cache_dir,
)
from streamguard.backbones.tiny_qwen3 import (
    QWEN3_CHAT_TEMPLATE,
    QWEN3_NAMED_TOKENS,
    QWEN3_OTHER_TOKENS,
    build_tiny_qwen3_processor,
)

RANDOM_PREFIX = "random:"
MARKER = "streamguard-random.json"  # in a random build's folder: it has a config, no weights
Layers = tuple[int, int, int]  # text, vision, audio


@dataclass(frozen=True)
class RandomSpec:
    """What a `random:` path asks for: a registered build, optionally with fewer layers."""

    name: str
    layers: Layers | None = None

    @property
    def folder_name(self) -> str:
        cut = "" if self.layers is None else "-layers-" + "-".join(map(str, self.layers))
        return f"random-{self.name}{cut}"


@dataclass(frozen=True)
class RandomBuild:
    backbone: str  # the model.backbone setting it loads as
    config: dict[str, Any]  # the released config (released.py)
    write: Callable[[Path, dict[str, Any]], None]  # config (layers applied) and processor → folder


def parse_random_path(path: str) -> RandomSpec:
    """`random:<name>` or `random:<name>?layers=T,V,A`, checked against the registry."""
    body = path.removeprefix(RANDOM_PREFIX)
    name, _, query = body.partition("?")
    if name not in RANDOM_BUILDS:
        raise ValueError(f"no random build {name!r}; known: {', '.join(RANDOM_BUILDS)}")
    if not query:
        return RandomSpec(name)
    key, _, value = query.partition("=")
    parts = value.split(",")
    if key != "layers" or len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"{path!r}: the only option is layers=TEXT,VISION,AUDIO (three positive layer counts), "
            "e.g. random:qwen2.5-omni-7b?layers=2,2,2"
        )
    text, vision, audio = (int(p) for p in parts)
    return RandomSpec(name, (text, vision, audio))


def random_backbone(path: str) -> str:
    """The `model.backbone` a random path loads as."""
    return RANDOM_BUILDS[parse_random_path(path).name].backbone


def with_layers(config: dict[str, Any], layers: Layers | None) -> dict[str, Any]:
    """The config with the text, vision and audio depths cut to `layers` (widths unchanged)."""
    config = copy.deepcopy(config)
    if layers is None:
        return config
    text_layers, vision_layers, audio_layers = layers
    text = config["text_config"]
    text["num_hidden_layers"] = text_layers
    if "max_window_layers" in text:
        text["max_window_layers"] = text_layers
    vision = config["vision_config"]
    vision["depth"] = vision_layers
    if "fullatt_block_indexes" in vision:
        kept = [i for i in vision["fullatt_block_indexes"] if i < vision_layers - 1]
        vision["fullatt_block_indexes"] = [*kept, vision_layers - 1]
    if "deepstack_visual_indexes" in vision:  # Qwen3-Omni: the blocks that still exist feed it
        vision["deepstack_visual_indexes"] = [
            i for i in vision["deepstack_visual_indexes"] if i < vision_layers
        ]
    config["audio_config"]["encoder_layers"] = audio_layers
    return config


def resolve_random(path: str, cache_dir: Path | None = None) -> str:
    """The cache folder of a random build, written on first use. Its name carries a digest of the
    config, so a changed builder never reads a stale folder."""
    spec = parse_random_path(path)
    build = RANDOM_BUILDS[spec.name]
    config = with_layers(build.config, spec.layers)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    folder = (cache_dir or default_cache_dir()) / f"{spec.folder_name}-{digest}"
    if is_random_build(folder):
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written beside, then renamed: a second process never reads a half-written folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build.write(staging, config)
        marker = {"path": path, "build": spec.name, "layers": spec.layers, "random_weights": True}
        (staging / MARKER).write_text(json.dumps(marker))
        os.replace(staging, folder)
    except OSError:
        if not is_random_build(folder):  # another process won the race: use its folder
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def is_random_build(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def instantiate(model_cls: Any, path: str, *, dtype: torch.dtype, device: torch.device, **kwargs: Any) -> Any:
    """`model_cls.from_pretrained(path)`, or for a random build its saved config through the
    class's own constructor and `_init_weights`, allocated on `device` in `dtype` (seed 0)."""
    if not is_random_build(path):
        return model_cls.from_pretrained(path, dtype=dtype, **kwargs)
    config = model_cls.config_class.from_pretrained(path)
    torch.manual_seed(0)
    with torch.device(device):
        return model_cls._from_config(config, dtype=dtype, **kwargs)


# -- builders ----------------------------------------------------------------------------------


def _write_qwen_omni(folder: Path, config: dict[str, Any]) -> None:
    from transformers import Qwen2_5OmniThinkerConfig

    tokenizer = build_tiny_tokenizer(NAMED_TOKENS, OTHER_TOKENS, token_ids=released.QWEN_TOKEN_IDS)
    min_pixels, max_pixels = released.QWEN25_OMNI_PIXELS
    processor = build_tiny_processor(min_pixels, max_pixels, tokenizer=tokenizer)
    Qwen2_5OmniThinkerConfig(**copy.deepcopy(config)).save_pretrained(folder)
    processor.save_pretrained(folder)


def _write_video_salmonn(folder: Path, config: dict[str, Any]) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessor

    from streamguard.backbones.salmonn import TRAINING_CHAT_TEMPLATE

    ids = {
        "<|endoftext|>": released.QWEN_TOKEN_IDS["<|endoftext|>"],
        "<|im_start|>": released.QWEN_TOKEN_IDS["<|im_start|>"],
        "<|im_end|>": released.QWEN_TOKEN_IDS["<|im_end|>"],
        "<|vision_start|>": released.QWEN_TOKEN_IDS["<|vision_bos|>"],
        "<|vision_end|>": released.QWEN_TOKEN_IDS["<|vision_eos|>"],
        "<|image_pad|>": released.QWEN_TOKEN_IDS["<|IMAGE|>"],
        "<|video_pad|>": released.QWEN_TOKEN_IDS["<|VIDEO|>"],
        SALMONN_AUDIO_TOKEN: released.SALMONN_AUDIO_TOKEN_ID,
    }
    tokenizer = build_tiny_tokenizer({}, SALMONN_SPECIAL_TOKENS, TRAINING_CHAT_TEMPLATE, token_ids=ids)
    tokenizer.add_tokens([SALMONN_AUDIO_TOKEN])  # a plain token, as video-SALMONN 2+ adds it
    Qwen2_5_VLConfig(**copy.deepcopy(config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    min_pixels, max_pixels = released.VIDEO_SALMONN_PIXELS
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    Qwen2VLImageProcessor(size=size).save_pretrained(folder)


def _write_qwen3_omni(folder: Path, config: dict[str, Any]) -> None:
    from transformers import Qwen3OmniMoeThinkerConfig

    tokenizer = build_tiny_tokenizer(
        QWEN3_NAMED_TOKENS, QWEN3_OTHER_TOKENS, QWEN3_CHAT_TEMPLATE, token_ids=released.QWEN3_OMNI_TOKEN_IDS
    )
    min_pixels, max_pixels = released.QWEN3_OMNI_PIXELS
    processor = build_tiny_qwen3_processor(min_pixels, max_pixels, tokenizer=tokenizer)
    Qwen3OmniMoeThinkerConfig(**copy.deepcopy(config)).save_pretrained(folder)
    processor.save_pretrained(folder)


RANDOM_BUILDS: dict[str, RandomBuild] = {
    "qwen2.5-omni-7b": RandomBuild("qwen2.5-omni", released.QWEN25_OMNI_7B_THINKER, _write_qwen_omni),
    "qwen2.5-omni-3b": RandomBuild("qwen2.5-omni", released.QWEN25_OMNI_3B_THINKER, _write_qwen_omni),
    "qwen3-omni-30b-a3b": RandomBuild("qwen3-omni", released.QWEN3_OMNI_30B_A3B_THINKER, _write_qwen3_omni),
    "video-salmonn2plus-7b": RandomBuild(
        "video-salmonn2+", released.VIDEO_SALMONN2PLUS_7B, _write_video_salmonn
    ),
}
