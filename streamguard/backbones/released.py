"""The released architectures, as numbers: what a `random:` build reproduces without the weights.

Each entry is the part of a published `config.json` that fixes the model's shape and cost (sizes,
layers, heads, KV heads, rotary layout, untied embeddings, vocabulary, special-token ids), in the
field names transformers reads. transformers' own defaults are NOT these: a default
`Qwen2_5OmniThinkerConfig` has a 3584-wide vision tower (released: 1280), no `mrope_section` and
tied text embeddings.

Sources (checked 2026-12-02; the Qwen checkpoints themselves are not reachable from here, so the
numbers are cross-checked across published copies of their config.json):
- Qwen/Qwen2.5-Omni-7B `thinker_config`: the thinker config.json of fine-tunes saved from it,
  huggingface.co/VoiceNet/voiceclap-large/blob/main/config.json and
  huggingface.co/gijs/aud2seq-model/blob/main/config.json (audio encoder, token ids, text
  sizes), huggingface.co/ACE-Step/acestep-captioner/blob/main/config.json (the full
  `Qwen2_5OmniForConditionalGeneration` config); NVIDIA Megatron-Bridge's Qwen2.5-Omni provider
  docs (docs.nvidia.com/nemo/megatron-bridge/latest/apidocs/bridge/
  bridge.models.qwen_omni.qwen25_omni_provider.html: mrope_section [16, 24, 24], vocab 152064,
  untied output layer, token ids); the vision tower is Qwen2.5-VL-7B's
  (huggingface.co/InternRobotics/InternVLA-N1-DualVLN/blob/main/config.json: depth 32, hidden
  1280, intermediate 3420, 16 heads, window 112, full attention at [7, 15, 23, 31]).
- Qwen/Qwen2.5-Omni-3B `thinker_config`: huggingface.co/OpenMOSS-Team/RoboOmni-LIBERO-Object/
  blob/main/config.json (a thinker saved from it: text 2048 wide, 11008 FFN, 16 heads, audio
  output 2048) and Tyr's Qwen25Omni/Config.lean ("from HF config.json": vocab 151936, 36 layers,
  2 KV heads, head_dim 128, rope_theta 1e6, 32768 positions).
- video-SALMONN 2+ 7B (tsinghua-ee/video-SALMONN-2_plus_7B): Qwen2.5-VL-7B-Instruct's config
  (huggingface.co/unsloth/Qwen2.5-VL-7B-Instruct/blob/main/config.json: 128000 positions, the
  text sizes above, tokens_per_second 2) plus the audio branch's published defaults
  (`salmonn_audio.PUBLISHED_WHISPER_DEFAULTS`, `PUBLISHED_QFORMER_DEFAULTS`: Whisper-large-v3,
  a 2-layer Q-Former 3072 wide).
- Qwen/Qwen3-Omni-30B-A3B-Instruct `thinker_config`: the whole config of the loaded checkpoint as
  transformers 5.7 prints it (`Qwen3OmniMoeConfig`, in a public model-information report of
  /models/Qwen3-Omni-30B-A3B-Instruct: text 48 layers of 128 experts (8 a token, 768 wide), 2048
  wide, 32 query / 4 key-value heads of 128, 65536 positions, interleaved mRoPE [24, 20, 20] at
  1e6, vocabulary 152064, untied; vision 27 blocks 1152 wide, deepstack [8, 16, 24], 16 px
  patches, output 2048; audio 32 layers of 1280, n_window 50, n_window_infer 800; token ids;
  position_id_per_seconds 13); cross-checked with keras-hub's qwen3_omni_presets.py ("48 layers
  with 32 query and 4 key/value attention heads, utilizing 128 experts (8 active per token)",
  30532122624 parameters: the decoder and its LM head here) and the thinker_config excerpts in
  public test suites (vision_start 151652, vision_end 151653, audio 151675, position ids 13).
  The processor's pixel bounds are `Qwen3OmniMoeProcessor`'s own (128 to 768 tokens of 32 px).
"""

from __future__ import annotations

from typing import Any

# Qwen2.5's tokenizer: ids of the special tokens the streaming prompt uses (tokenizer_config.json
# of every Qwen2.5 checkpoint; the same ids in the thinker configs above).
QWEN_TOKEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
    "<|vision_bos|>": 151652,  # Qwen2.5-VL names it <|vision_start|>
    "<|vision_eos|>": 151653,  # <|vision_end|>
    "<|IMAGE|>": 151655,  # <|image_pad|>
    "<|VIDEO|>": 151656,  # <|video_pad|>
}
# video-SALMONN 2+ adds <|audio_pad|> after Qwen2.5-VL's 151665 tokens (ids 0…151664): the next
# free id. The embedding table keeps Qwen2.5-VL's 152064 rows, so no resize is needed.
SALMONN_AUDIO_TOKEN_ID = 151665

# The Qwen2.5-VL vision tower both Qwen2.5-Omni sizes and video-SALMONN 2+ carry.
QWEN25_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}

# The Whisper-large-v3 encoder both audio branches are sized as (Qwen2.5-Omni's audio tower is
# initialised from it; video-SALMONN 2+ carries it).
WHISPER_LARGE_V3_ENCODER = {
    "num_mel_bins": 128,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "d_model": 1280,
    "activation_function": "gelu",
    "scale_embedding": False,
    "max_source_positions": 1500,
}
QWEN25_OMNI_AUDIO = {**WHISPER_LARGE_V3_ENCODER, "n_window": 100}  # 100-frame attention windows


def _qwen2_text(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, vocab: int, positions: int):
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": positions,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": layers,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
    }


def _omni_thinker(text: dict[str, Any]) -> dict[str, Any]:
    hidden = text["hidden_size"]
    return {
        "text_config": text,
        "vision_config": {**QWEN25_VISION, "out_hidden_size": hidden},
        "audio_config": {**QWEN25_OMNI_AUDIO, "output_dim": hidden},
        "audio_token_index": QWEN_TOKEN_IDS["<|AUDIO|>"],
        "image_token_index": QWEN_TOKEN_IDS["<|IMAGE|>"],
        "video_token_index": QWEN_TOKEN_IDS["<|VIDEO|>"],
        "audio_start_token_id": QWEN_TOKEN_IDS["<|audio_bos|>"],
        "audio_end_token_id": QWEN_TOKEN_IDS["<|audio_eos|>"],
        "vision_start_token_id": QWEN_TOKEN_IDS["<|vision_bos|>"],
        "vision_end_token_id": QWEN_TOKEN_IDS["<|vision_eos|>"],
        "bos_token_id": QWEN_TOKEN_IDS["<|im_start|>"],
        "eos_token_id": QWEN_TOKEN_IDS["<|im_end|>"],
        "pad_token_id": QWEN_TOKEN_IDS["<|endoftext|>"],
        "user_token_id": 872,  # "user"
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
    }


QWEN25_OMNI_7B_THINKER = _omni_thinker(_qwen2_text(3584, 18944, 28, 28, 4, 152064, 32768))
QWEN25_OMNI_3B_THINKER = _omni_thinker(_qwen2_text(2048, 11008, 36, 16, 2, 151936, 32768))

# video-SALMONN 2+ 7B: Qwen2.5-VL-7B-Instruct, and its audio branch at the published defaults
# (salmonn_audio fills in Whisper-large-v3 and the Q-Former from them).
VIDEO_SALMONN2PLUS_7B = {
    "text_config": {
        **_qwen2_text(3584, 18944, 28, 28, 4, 152064, 128000),
        "bos_token_id": QWEN_TOKEN_IDS["<|endoftext|>"],
        "eos_token_id": QWEN_TOKEN_IDS["<|im_end|>"],
    },
    "vision_config": {**QWEN25_VISION, "out_hidden_size": 3584, "tokens_per_second": 2},
    "audio_config": {"model_type": "whisper"},
    "audio_token_id": SALMONN_AUDIO_TOKEN_ID,
    "image_token_id": QWEN_TOKEN_IDS["<|IMAGE|>"],
    "video_token_id": QWEN_TOKEN_IDS["<|VIDEO|>"],
    "vision_start_token_id": QWEN_TOKEN_IDS["<|vision_bos|>"],
    "vision_end_token_id": QWEN_TOKEN_IDS["<|vision_eos|>"],
    "tie_word_embeddings": False,
}

# The processors' published per-frame pixel bounds (preprocessor_config.json).
QWEN25_OMNI_PIXELS = (3136, 12845056)  # min_pixels, max_pixels
VIDEO_SALMONN_PIXELS = (3136, 61250)  # video_min_frame_pixels, video_max_frame_pixels

# Qwen3-Omni's tokenizer: the media tokens get ids of their own (audio 151669…151675; the vision
# ids are Qwen2.5's), from the thinker_config above.
QWEN3_OMNI_TOKEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<|audio_pad|>": 151675,
}

QWEN3_OMNI_30B_A3B_THINKER = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 2048,
        "intermediate_size": 768,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 65536,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [24, 20, 20],
            "interleaved": True,
        },
        "attention_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": 4304,
        "num_heads": 16,
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
        "out_hidden_size": 2048,
    },
    "audio_config": {  # its own AuT encoder, sized as Whisper-large-v3's
        **WHISPER_LARGE_V3_ENCODER,
        "n_window": 50,
        "n_window_infer": 800,
        "conv_chunksize": 500,
        "downsample_hidden_size": 480,
        "output_dim": 2048,
    },
    "audio_token_id": QWEN3_OMNI_TOKEN_IDS["<|audio_pad|>"],
    "image_token_id": QWEN3_OMNI_TOKEN_IDS["<|image_pad|>"],
    "video_token_id": QWEN3_OMNI_TOKEN_IDS["<|video_pad|>"],
    "audio_start_token_id": QWEN3_OMNI_TOKEN_IDS["<|audio_start|>"],
    "audio_end_token_id": QWEN3_OMNI_TOKEN_IDS["<|audio_end|>"],
    "vision_start_token_id": QWEN3_OMNI_TOKEN_IDS["<|vision_start|>"],
    "vision_end_token_id": QWEN3_OMNI_TOKEN_IDS["<|vision_end|>"],
    "user_token_id": 872,  # "user"
    "position_id_per_seconds": 13,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
QWEN3_OMNI_PIXELS = (128 * 32 * 32, 768 * 32 * 32)  # Qwen3OmniMoeProcessor's video bounds
