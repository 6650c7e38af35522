"""video-SALMONN 2+'s audio branch: a Whisper encoder and a window-level Q-Former projector.

Published as the `audio` module of `video_SALMONN2_plus` (bytedance/video-SALMONN-2,
video_SALMONN2_plus/qwenvl/model/modeling_whisper.py): the Whisper-large-v3 encoder over one 30 s
log-mel window (3000 frames → 1500 encoder frames, 50 a second), cut into windows of
`second_per_window` seconds every `second_stride` seconds (0.5 s and 0.5 s: 25 frames, 60
windows); each window is read by `query_length` learned queries (`q_tokens`, 1) through a
BLIP-2-style Q-Former (`qformer.bert`: 2 layers, each self-attention over the queries,
cross-attention into the window, feed-forward), and `audio_proj` maps the query outputs into the
LLM's embedding space. So one 30 s window gives 60 audio tokens: 2 a second.

Built here from transformers' own classes: `WhisperEncoder` (the same module and parameter names
as the published encoder) and `Blip2QFormerModel` without text input (the same computation as the
published query-only Q-Former: LayerNorm on the queries, then the layers). Only the windowing,
`q_tokens` and `audio_proj` are video-SALMONN's own; they are reimplemented faithfully. Weights load
from a checkpoint by their published names (`published_name`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import nn

from streamguard.backbones.base import BackboneError
from streamguard.backbones.released import WHISPER_LARGE_V3_ENCODER

# The published WhisperConfig / BertConfig defaults (configuration_qwen2_5_vl.py): a checkpoint's
# `audio_config` overrides them; transformers' own defaults (whisper-tiny, bert-base) never apply.
PUBLISHED_WHISPER_DEFAULTS: dict[str, Any] = {
    **WHISPER_LARGE_V3_ENCODER,
    "second_per_window": 0.5,
    "second_stride": 0.5,
}
PUBLISHED_QFORMER_DEFAULTS: dict[str, Any] = {
    "hidden_size": 3072,
    "num_hidden_layers": 2,
    "num_attention_heads": 12,
    "intermediate_size": 12288,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "encoder_width": 1280,
    "cross_attention_freq": 1,
    "query_length": 1,
}
# The published windowing assumes Whisper's 1500 encoder frames per 30 s window.
ENCODER_FRAMES_PER_SECOND = 50
WHISPER_WINDOW_SECONDS = 30

# Our parameter name → the published one (first match wins); everything else is named alike.
_PUBLISHED_NAMES = [
    (re.compile(r"^encoder\."), ""),
    (re.compile(r"^qformer\.layernorm\."), "qformer.bert.embeddings.LayerNorm."),
    (
        re.compile(r"^qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\."),
        r"qformer.bert.encoder.layer.\1.\2.self.",
    ),
    (re.compile(r"^qformer\.encoder\."), "qformer.bert.encoder."),
]


def published_name(name: str) -> str:
    """The name a parameter of `WindowQFormerAudio` has in a published checkpoint's `audio.*`."""
    for pattern, replacement in _PUBLISHED_NAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return name


def _whisper_config(audio_config: dict[str, Any]):
    from transformers import WhisperConfig

    fields = {**PUBLISHED_WHISPER_DEFAULTS, **audio_config}
    fields.pop("qformer_config", None)
    fields.pop("model_type", None)
    return WhisperConfig(**fields)


def _qformer_config(fields: dict[str, Any]):
    from transformers import Blip2QFormerConfig

    return Blip2QFormerConfig(
        hidden_size=fields["hidden_size"],
        num_hidden_layers=fields["num_hidden_layers"],
        num_attention_heads=fields["num_attention_heads"],
        intermediate_size=fields["intermediate_size"],
        hidden_act=fields["hidden_act"],
        layer_norm_eps=fields["layer_norm_eps"],
        encoder_hidden_size=fields["encoder_width"],
        cross_attention_frequency=fields["cross_attention_freq"],
        use_qformer_text_input=False,  # the published Q-Former reads queries only
    )


class WindowQFormerAudio(nn.Module):
    """Log-mel windows of 30 s → audio tokens in the LLM space, 2 a second (published defaults)."""

    def __init__(self, audio_config: dict[str, Any], llm_hidden_size: int):
        from transformers import Blip2QFormerModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        super().__init__()
        whisper = _whisper_config(audio_config)
        qformer_fields = {**PUBLISHED_QFORMER_DEFAULTS, **(audio_config.get("qformer_config") or {})}
        qformer = _qformer_config(qformer_fields)
        query_length = int(qformer_fields["query_length"])
        self.encoder = WhisperEncoder(whisper)
        self.qformer = Blip2QFormerModel(qformer)
        self.q_tokens = nn.Parameter(torch.zeros(1, query_length, qformer.hidden_size))
        nn.init.normal_(self.q_tokens, std=0.02)  # as the published conversion script initialises it
        self.audio_proj = nn.Linear(qformer.hidden_size, llm_hidden_size)
        self.num_mel_bins = int(whisper.num_mel_bins)
        self.window_frames = round(ENCODER_FRAMES_PER_SECOND * float(whisper.second_per_window))
        self.stride_frames = round(ENCODER_FRAMES_PER_SECOND * float(whisper.second_stride))
        self.seconds_per_window_step = float(whisper.second_stride)
        self.query_length = query_length
        self.encoder_frames = int(whisper.max_source_positions)

    def tokens_for(self, seconds: float) -> int:
        """Audio tokens covering `seconds` of audio at the start of a window: one window step each
        (times the queries per window)."""
        steps = seconds / self.seconds_per_window_step
        if abs(steps - round(steps)) > 1e-9:
            raise BackboneError(
                f"a {seconds} s chunk is not a whole number of {self.seconds_per_window_step} s audio windows"
            )
        return round(steps) * self.query_length

    def forward(self, features: torch.Tensor, num_windows: int) -> torch.Tensor:
        """(B, num_mel_bins, 3000) log-mel of 30 s windows → (B, num_windows·query_length, d): the
        tokens of the first `num_windows` windows. Windows are read independently, so the first
        ones are exactly what the published module computes for all 60."""
        frames = (num_windows - 1) * self.stride_frames + self.window_frames
        if frames > self.encoder_frames:
            raise ValueError(
                f"{num_windows} windows need {frames} encoder frames; a window has {self.encoder_frames}"
            )
        hidden = self.encoder(features).last_hidden_state[:, :frames]
        batch, _, channels = hidden.shape
        # (B, W, C, window) → (B·W, window, C): one Q-Former batch row per window
        windows = hidden.unfold(1, self.window_frames, self.stride_frames).permute(0, 1, 3, 2)
        windows = windows.reshape(batch * num_windows, self.window_frames, channels)
        queries = self.q_tokens.expand(windows.shape[0], -1, -1)
        read = self.qformer(query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
        return self.audio_proj(read).reshape(batch, num_windows * self.query_length, -1)

    # -- the published checkpoint layout ---------------------------------------------------

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        return {published_name(name): tensor for name, tensor in self.state_dict().items()}

    def load_published(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load every parameter from its published name (strict: a missing one is an error)."""
        wanted = {name: published_name(name) for name in self.state_dict()}
        missing = sorted(published for published in wanted.values() if published not in tensors)
        if missing:
            raise BackboneError(
                f"the checkpoint lacks {len(missing)} of the audio branch's {len(wanted)} weights "
                f"(audio.{missing[0]}, …): not a video-SALMONN 2+ checkpoint"
            )
        self.load_state_dict({name: tensors[published] for name, published in wanted.items()}, assign=True)


def read_checkpoint_tensors(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under `prefix` in a checkpoint's safetensors (one file or an indexed set), named
    without the prefix. Local folders and hub ids alike (hub files come from the HF cache)."""
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    index = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False)
    if index is not None:
        with open(index) as handle:
            weight_map = json.load(handle)["weight_map"]
        names = sorted({file for key, file in weight_map.items() if key.startswith(prefix)})
    else:
        names = [SAFE_WEIGHTS_NAME]
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        with safe_open(cached_file(path, name), framework="pt") as shard:
            names_in_shard = shard.keys()  # a safetensors handle is not iterable
            for key in names_in_shard:
                if key.startswith(prefix):
                    tensors[key[len(prefix) :]] = shard.get_tensor(key)
    return tensors
