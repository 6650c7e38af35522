"""A tiny, randomly initialised Qwen3-Omni thinker: the real classes, written with save_pretrained.

`Qwen3OmniMoeThinkerForConditionalGeneration` with a small config (a three-layer mixture-of-experts
decoder with interleaved mRoPE, a two-block vision tower whose both blocks feed deepstack, a
two-layer audio encoder) and `Qwen3OmniMoeProcessor` built from the real Qwen2-VL video and image
processors (16 px patches, 2×2 merge: 32 px a token), Whisper feature extractor and a byte-level
BPE Qwen2 tokenizer carrying Qwen3-Omni's special tokens. Its answers are random tokens.

A thinker config built from scratch has no `vision_start_token_id` (the released checkpoint's
config.json carries one, and `get_rope_index` needs it), and the config class defaults to 25
position ids a second where the released checkpoint and the processor use 13: both are set here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamguard.backbones.tiny import build_tiny_tokenizer, save_tiny_thinker

# Qwen3-Omni's media tokens, named as its tokenizer_config names them.
QWEN3_NAMED_TOKENS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
QWEN3_OTHER_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The released checkpoint's value (thinker_config.position_id_per_seconds), the processor's too.
POSITION_ID_PER_SECONDS = 13

# ChatML with media laid as the released template lays them: a video turn is
# <|vision_start|><|video_pad|><|vision_end|>, which the processor expands into the timestamp
# interleaving of video groups and audio.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen3_processor(
    min_pixels: int = 4 * 32 * 32, max_pixels: int = 32 * 32 * 32, tokenizer: Any = None
):
    """Qwen3-Omni's processor from its real components; the tiny tokenizer unless given one."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3OmniMoeProcessor,
        WhisperFeatureExtractor,
    )

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    vision = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2, "size": size}
    return Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer
        or build_tiny_tokenizer(QWEN3_NAMED_TOKENS, QWEN3_OTHER_TOKENS, QWEN3_CHAT_TEMPLATE),
        chat_template=QWEN3_CHAT_TEMPLATE,
    )


def build_tiny_qwen3_thinker_config(
    tokenizer, *, hidden_size: int = 64, max_position_embeddings: int = 32768
):
    from transformers import Qwen3OmniMoeThinkerConfig

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in QWEN3_NAMED_TOKENS.items()}
    # As in the release (2048 wide, 32 heads of 128), a head is wider than hidden / heads.
    heads, head_dim = 4, 32
    return Qwen3OmniMoeThinkerConfig(
        audio_config={
            "d_model": 32,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "encoder_layers": 2,
            "num_mel_bins": 128,
            "downsample_hidden_size": 8,
            "output_dim": hidden_size,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0, 1],  # feed decoder layers 0 and 1; layer 2 gets none
            "out_hidden_size": hidden_size,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "moe_intermediate_size": hidden_size // 2,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "num_hidden_layers": 3,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "max_position_embeddings": max_position_embeddings,
            # Interleaved mRoPE as the release's (mrope_section [24, 20, 20] of 64 frequencies).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000.0,
                "mrope_section": [6, 5, 5],
                "interleaved": True,
            },
            # Wider than the usual 0.02 so attention is sharp and logits react to a single
            # position or token: parity tests on a near-uniform attention would prove nothing.
            "initializer_range": 0.25,
        },
        initializer_range=0.25,
        audio_token_id=ids["audio_token"],
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("u"),
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
    )


def build_tiny_qwen3_checkpoint(
    folder: str | Path, *, seed: int = 0, hidden_size: int = 64, max_position_embeddings: int = 32768
) -> Path:
    """Write a tiny random Qwen3-Omni thinker and its processor to `folder` with `save_pretrained`."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    processor = build_tiny_qwen3_processor()
    config = build_tiny_qwen3_thinker_config(
        processor.tokenizer, hidden_size=hidden_size, max_position_embeddings=max_position_embeddings
    )
    return save_tiny_thinker(
        folder, Qwen3OmniMoeThinkerForConditionalGeneration, config, processor, seed=seed
    )
