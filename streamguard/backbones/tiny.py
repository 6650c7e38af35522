"""Tiny, randomly initialised checkpoints of the real transformers classes, one per backbone.

Nothing here is a stand-in. Qwen2.5-Omni: `Qwen2_5OmniThinkerForConditionalGeneration` with a
small config and `Qwen2_5OmniProcessor` built from the real video processor, Whisper feature
extractor and a byte-level BPE Qwen2 tokenizer carrying Qwen2.5-Omni's special tokens and chat
template. video-SALMONN 2+: `Qwen2_5_VLForConditionalGeneration` plus its audio branch
(transformers' `WhisperEncoder` and `Blip2QFormerModel`) saved under the published names. All are
written with `save_pretrained` and read back through the same `from_pretrained` path a
downloaded checkpoint takes. Their answers are random tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

TINY_PREFIX = "tiny:"
TINY_MARKER = "streamguard-tiny.json"  # in a tiny build's folder, written last

# Qwen2.5-Omni's special tokens, named as its tokenizer_config names them.
SPECIAL_TOKENS = {
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
}
NAMED_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
OTHER_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5-Omni's chat template (the released checkpoint's, reformatted onto lines).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_cache_dir() -> Path:
    root = os.environ.get("STREAMGUARD_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "streamguard"
    )
    return Path(root)


def _byte_level_vocab() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {ch: i for i, ch in enumerate(bytes_to_unicode().values())}


def build_tiny_tokenizer(
    named_tokens: dict[str, str] = NAMED_TOKENS,
    other_tokens: list[str] = OTHER_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
    token_ids: Mapping[str, int] | None = None,
):
    """A byte-level BPE Qwen2 tokenizer (no merges) carrying a model's special tokens: the named
    ones become tokenizer attributes (`tokenizer.video_token`), the others plain special tokens.
    `token_ids` places special tokens at given ids (a released model's); the rest follow the bytes."""
    from transformers import Qwen2Tokenizer

    vocab = _byte_level_vocab()
    vocab.update(token_ids or {})
    for token in [*other_tokens, *named_tokens.values()]:
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        errors="replace",
        extra_special_tokens=named_tokens,
        model_max_length=32768,
        **SPECIAL_TOKENS,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": other_tokens}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_processor(
    min_pixels: int = 4 * 28 * 28, max_pixels: int = 32 * 28 * 28, tokenizer: Any = None
):
    """Qwen2.5-Omni's processor from its real components; the tiny tokenizer unless given one."""
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer or build_tiny_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_text_config(vocab_size: int, hidden_size: int, max_position_embeddings: int) -> dict:
    """A two-layer Qwen2 decoder with three-axis rotary positions, sections split as Qwen's are."""
    heads = 4
    half_head_dim = hidden_size // heads // 2
    t_section = half_head_dim // 4
    mrope_section = [
        t_section,
        (half_head_dim - t_section) // 2,
        half_head_dim - t_section - (half_head_dim - t_section) // 2,
    ]
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0, "mrope_section": mrope_section},
        "tie_word_embeddings": False,
        # Wider than the usual 0.02 so attention is sharp and logits react to a single
        # position or token: parity tests on a near-uniform attention would prove nothing.
        "initializer_range": 0.25,
    }


def tiny_vision_config(hidden_size: int) -> dict:
    """A two-block Qwen2.5-VL vision tower (14 px patches, 2×2 merge, 2-frame temporal patches)."""
    return {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "out_hidden_size": hidden_size,
    }


def build_tiny_thinker_config(tokenizer, *, hidden_size: int = 64, max_position_embeddings: int = 32768):
    from transformers import Qwen2_5OmniThinkerConfig

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in NAMED_TOKENS.items()}
    return Qwen2_5OmniThinkerConfig(
        audio_config={
            "d_model": 32,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "encoder_layers": 2,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
            "n_window": 100,
            "output_dim": hidden_size,
        },
        vision_config=tiny_vision_config(hidden_size),
        text_config=tiny_text_config(len(tokenizer), hidden_size, max_position_embeddings),
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("u"),
        position_id_per_seconds=25,
        seconds_per_chunk=2,
    )


def build_tiny_checkpoint(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    max_position_embeddings: int = 32768,
) -> Path:
    """Write a tiny random thinker and its processor to `folder` with `save_pretrained`."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    processor = build_tiny_processor()
    config = build_tiny_thinker_config(
        processor.tokenizer, hidden_size=hidden_size, max_position_embeddings=max_position_embeddings
    )
    return save_tiny_thinker(folder, Qwen2_5OmniThinkerForConditionalGeneration, config, processor, seed=seed)


def save_tiny_thinker(
    folder: str | Path, model_class: Any, config: Any, processor: Any, *, seed: int
) -> Path:
    """Initialise `model_class(config)` from `seed` and write it and `processor` to `folder` with
    `save_pretrained`, the marker last (a folder without it is a build that did not finish)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    hidden_size = config.get_text_config().hidden_size
    (folder / TINY_MARKER).write_text(json.dumps({"seed": seed, "hidden_size": hidden_size}))
    return folder


# video-SALMONN 2+ keeps Qwen2.5-VL's tokenizer and adds one plain (non-special) token for audio.
SALMONN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
SALMONN_AUDIO_TOKEN = "<|audio_pad|>"


def build_tiny_salmonn_config(tokenizer, *, hidden_size: int = 64, max_position_embeddings: int = 32768):
    """A `qwen2_5_vl` config with video-SALMONN 2+'s `audio_config` (its Whisper encoder and window
    Q-Former, in the published field names) and `audio_token_id`, as its checkpoints carry."""
    from transformers import Qwen2_5_VLConfig

    def token(text: str) -> int:
        return tokenizer.convert_tokens_to_ids(text)

    text_config = tiny_text_config(len(tokenizer), hidden_size, max_position_embeddings)
    text_config.update(bos_token_id=token("<|endoftext|>"), eos_token_id=token("<|im_end|>"))
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config={**tiny_vision_config(hidden_size), "tokens_per_second": 2},
        audio_config={
            "model_type": "whisper",
            "num_mel_bins": 128,
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "max_source_positions": 1500,
            "second_per_window": 0.5,
            "second_stride": 0.5,
            "qformer_config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 64,
                "encoder_width": 32,
                "cross_attention_freq": 1,
                "query_length": 1,
                "out_hidden_size": hidden_size,
            },
        },
        audio_token_id=token(SALMONN_AUDIO_TOKEN),
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )


def build_tiny_salmonn_checkpoint(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    max_position_embeddings: int = 32768,
    min_pixels: int = 4 * 28 * 28,
    max_pixels: int = 32 * 28 * 28,
) -> Path:
    """Write a tiny random video-SALMONN 2+ checkpoint to `folder`, laid out as the published ones:
    `Qwen2_5_VLForConditionalGeneration.save_pretrained` (visual.*, model.*, lm_head.*) with the
    audio branch's weights under their published `audio.*` names in the same file, the tokenizer
    with `<|audio_pad|>` added, and Qwen2.5-VL's image processor config."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    from streamguard.backbones.salmonn import TRAINING_CHAT_TEMPLATE
    from streamguard.backbones.salmonn_audio import WindowQFormerAudio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer({}, SALMONN_SPECIAL_TOKENS, TRAINING_CHAT_TEMPLATE)
    tokenizer.add_tokens([SALMONN_AUDIO_TOKEN])
    config = build_tiny_salmonn_config(
        tokenizer, hidden_size=hidden_size, max_position_embeddings=max_position_embeddings
    )
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    audio = WindowQFormerAudio(config.audio_config, hidden_size)
    weights = folder / "model.safetensors"
    with safe_open(weights, framework="pt") as saved:
        names = saved.keys()  # a safetensors handle is not iterable
        tensors = {key: saved.get_tensor(key) for key in names}
        metadata = saved.metadata()
    tensors.update({f"audio.{name}": t.contiguous() for name, t in audio.published_state_dict().items()})
    save_file(tensors, weights, metadata=metadata)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}).save_pretrained(
        folder
    )
    (folder / TINY_MARKER).write_text(json.dumps({"seed": seed, "hidden_size": hidden_size}))
    return folder


def build_tiny_qwen3_omni_checkpoint(folder: str | Path) -> Path:
    from streamguard.backbones.tiny_qwen3 import build_tiny_qwen3_checkpoint

    return build_tiny_qwen3_checkpoint(folder)


TINY_BUILDERS = {
    "qwen2.5-omni": build_tiny_checkpoint,
    "qwen3-omni": build_tiny_qwen3_omni_checkpoint,
    "video-salmonn": build_tiny_salmonn_checkpoint,
}


def resolve_tiny(path: str) -> str:
    """Map `tiny:qwen2.5-omni`, `tiny:qwen3-omni` or `tiny:video-salmonn` to a cached folder,
    building it on first use."""
    backbone = path[len(TINY_PREFIX) :] or "qwen2.5-omni"
    if backbone not in TINY_BUILDERS:
        raise ValueError(f"no tiny build for backbone {backbone!r}; known: {', '.join(TINY_BUILDERS)}")
    folder = default_cache_dir() / f"tiny-{backbone}"
    if not (folder / TINY_MARKER).is_file():
        TINY_BUILDERS[backbone](folder)
    return str(folder)
