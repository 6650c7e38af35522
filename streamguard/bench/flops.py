"""Compute of one chunk through a Qwen2.5-Omni thinker, in FLOPs, from the model's dimensions.

Matrix products only (norms, activations, softmax and rotary are a few percent), 2 FLOPs per
multiply-accumulate. For one 2-second chunk with a video grid of F temporal patches × H × W merged
tokens (P = 4·F·H·W patches before the 2×2 merge), M = 200 mel frames, V kept video tokens and
A = 50 audio tokens appended after C cached tokens:

  vision   = 2·P·(c·t·p²)·h_v                                    patch embedding (Conv3d)
           + L_v · [2·P·4·h_v² + 2·P·3·h_v·I_v + 4·P·w·h_v]       q,k,v,o; SwiGLU; QKᵀ and AV
             (w = keys a patch attends to: (window/p)² patches in windowed layers, P in full ones)
           + 2·(P/4)·(16·h_v² + 4·h_v·d)                           the 2×2 patch merger MLP
  audio    = 2·M·(3·m)·h_a + 2·(M/2)·(3·h_a)·h_a                   two Conv1d, the second stride 2
           + L_a · [2·T·4·h_a² + 2·T·2·h_a·I_a + 4·T²·h_a]         T = M/2 frames, full attention
           + 2·(T/2)·h_a·d                                         projection after the 2× pooling
  prefill  = L · [2·N·(2·d² + 2·d·d_kv) + 2·N·3·d·I + 4·d·(N·C + N·(N+1)/2)]
             N = V + A new tokens; d_kv = kv_heads·d/heads; causal attention over cache and chunk
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MERGE = 2  # Qwen2.5-Omni merges 2×2 patches into one video token
MEL_FRAMES_PER_CHUNK = 200  # 2 s of 16 kHz audio at hop 160


@dataclass(frozen=True)
class ThinkerDims:
    """The sizes the FLOP count needs, for the language model and both encoders."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    vision_full_attention_layers: int
    vision_window_patches: int
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    audio_hidden: int
    audio_layers: int
    audio_intermediate: int
    mel_bins: int

    @classmethod
    def from_config(cls, config: Any) -> ThinkerDims:
        """From a transformers `Qwen2_5OmniThinkerConfig` (the loaded checkpoint's)."""
        text, vision, audio = config.get_text_config(), config.vision_config, config.audio_config
        return cls(
            hidden=text.hidden_size,
            layers=text.num_hidden_layers,
            intermediate=text.intermediate_size,
            heads=text.num_attention_heads,
            kv_heads=text.num_key_value_heads,
            vision_hidden=vision.hidden_size,
            vision_layers=vision.depth,
            vision_intermediate=vision.intermediate_size,
            vision_full_attention_layers=len(vision.fullatt_block_indexes),
            vision_window_patches=(vision.window_size // vision.patch_size) ** 2,
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            in_channels=vision.in_channels,
            audio_hidden=audio.d_model,
            audio_layers=audio.encoder_layers,
            audio_intermediate=audio.encoder_ffn_dim,
            mel_bins=audio.num_mel_bins,
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# Qwen2.5-Omni-7B's thinker, from its released config.json: the text model (hidden 3584, 28
# layers, SwiGLU 18944, 28 query / 4 key-value heads), the ViT (32 layers, hidden 1280, SwiGLU
# 3420, window 112 px, full attention in 4 layers) and the Whisper-large-v3-sized audio encoder.
QWEN25_OMNI_7B = ThinkerDims(
    hidden=3584,
    layers=28,
    intermediate=18944,
    heads=28,
    kv_heads=4,
    vision_hidden=1280,
    vision_layers=32,
    vision_intermediate=3420,
    vision_full_attention_layers=4,
    vision_window_patches=(112 // 14) ** 2,
    patch_size=14,
    temporal_patch_size=2,
    in_channels=3,
    audio_hidden=1280,
    audio_layers=32,
    audio_intermediate=5120,
    mel_bins=128,
)


def vision_flops(dims: ThinkerDims, grid: tuple[int, int, int]) -> float:
    """One chunk's vision encoder; `grid` is (F, H, W) in merged tokens."""
    frames, height, width = grid
    patches = frames * height * width * MERGE * MERGE
    h, i = dims.vision_hidden, dims.vision_intermediate
    embed = 2 * patches * dims.in_channels * dims.temporal_patch_size * dims.patch_size**2 * h
    window = min(dims.vision_window_patches, patches)
    windowed_layers = dims.vision_layers - dims.vision_full_attention_layers
    per_layer_dense = 2 * patches * 4 * h * h + 2 * patches * 3 * h * i
    attention = 4 * patches * h * (windowed_layers * window + dims.vision_full_attention_layers * patches)
    merged = patches // (MERGE * MERGE)
    merger = 2 * merged * (16 * h * h + 4 * h * dims.hidden)
    return float(embed + dims.vision_layers * per_layer_dense + attention + merger)


def audio_flops(dims: ThinkerDims, mel_frames: int = MEL_FRAMES_PER_CHUNK) -> float:
    """One chunk's audio encoder (its mel frames → 50 tokens)."""
    h, i = dims.audio_hidden, dims.audio_intermediate
    frames = mel_frames // 2
    convs = 2 * mel_frames * 3 * dims.mel_bins * h + 2 * frames * 3 * h * h
    layers = dims.audio_layers * (2 * frames * 4 * h * h + 2 * frames * 2 * h * i + 4 * frames * frames * h)
    projection = 2 * (frames // 2) * h * dims.hidden
    return float(convs + layers + projection)


def prefill_flops(dims: ThinkerDims, new_tokens: int, cached_tokens: int) -> float:
    """Appending `new_tokens` to a cache of `cached_tokens` (no LM head: a prefill skips it)."""
    d = dims.hidden
    d_kv = dims.kv_heads * d // dims.heads
    n, c = new_tokens, cached_tokens
    dense = 2 * n * (2 * d * d + 2 * d * d_kv) + 2 * n * 3 * d * dims.intermediate
    attention = 4 * d * (n * c + n * (n + 1) / 2)
    return float(dims.layers * (dense + attention))


def chunk_flops(
    dims: ThinkerDims, grid: tuple[int, int, int], kept_video: int, audio_tokens: int, cached_tokens: int
) -> dict[str, float]:
    """Encode (both encoders, every video token) and prefill (the kept tokens) of one chunk."""
    vision, audio = vision_flops(dims, grid), audio_flops(dims)
    prefill = prefill_flops(dims, kept_video + audio_tokens, cached_tokens)
    return {"vision": vision, "audio": audio, "prefill": prefill, "total": vision + audio + prefill}


def kv_bytes_per_token(dims: ThinkerDims, bytes_per_value: int = 2) -> int:
    """Cache bytes one token holds: keys and values of every layer's key-value heads (bf16 default)."""
    head_dim = dims.hidden // dims.heads
    return dims.layers * 2 * dims.kv_heads * head_dim * bytes_per_value
