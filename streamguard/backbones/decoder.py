"""The half the Qwen-based backbones share: a Qwen2 decoder with three-axis rotary positions
(mRoPE), its ChatML tokenizer, its Qwen2.5-VL vision tower, and a rolling KV cache.

A backbone subclasses `QwenDecoderBackbone` and adds what differs: preprocessing, the audio
encoder, and where a chunk's tokens go (order and positions).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from streamguard.backbones.base import RANDOM_WEIGHTS_NOTE, ChunkInputs, DeepstackFeatures, EncodedChunk
from streamguard.backbones.ragged import RaggedRow, ragged_forward
from streamguard.config import ChunkSettings, ModelSettings

log = logging.getLogger("streamguard.backbones")


class QwenDecoderBackbone(ABC):
    """The decoder side of the `Backbone` protocol, over a transformers model whose `.model` holds
    `language_model` and `get_video_features`, with an `lm_head` beside it."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_id: str,
        settings: ModelSettings,
        chunk: ChunkSettings,
        random_weights: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.settings = settings
        self.chunk = chunk
        self.random_weights = random_weights
        if random_weights:
            log.warning("%s has %s", model_id, RANDOM_WEIGHTS_NOTE)
        text_config = model.config.get_text_config()
        self.hidden_size = int(text_config.hidden_size)
        self.max_positions = int(text_config.max_position_embeddings)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.eos_token_ids = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
        if tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(tokenizer.eos_token_id)
        self._rotary = model.model.language_model.rotary_emb

    # -- encoders --------------------------------------------------------------------------

    def encode_audio(self, inputs: ChunkInputs) -> torch.Tensor:
        return self.encode_audios([inputs])[0]

    @abstractmethod
    def encode_audios(self, batch: Sequence[ChunkInputs]) -> list[torch.Tensor]:
        """Several chunks' audio in one audio-encoder call, (L, d) each."""

    def encode_video(self, inputs: ChunkInputs) -> torch.Tensor | None:
        return self.encode_vision(inputs)[0]

    def encode_vision(self, inputs: ChunkInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(F, H, W, d) video tokens and, where the vision tower has deepstack mergers (Qwen3-Omni),
        their (K, F, H, W, d) deepstack features."""
        return self.encode_visions([inputs])[0]

    @torch.inference_mode()
    def encode_visions(
        self, batch: Sequence[ChunkInputs]
    ) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """`encode_vision` of several chunks in one vision-tower call: each row of
        `video_grid_thw` is an item and no attention crosses items, so each comes out as if
        encoded alone."""
        items = [i for i, inputs in enumerate(batch) if inputs.pixel_values_videos is not None]
        out: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(None, None)] * len(batch)
        if not items:
            return out
        pixels = torch.cat([batch[i].pixel_values_videos for i in items]).to(self.device, non_blocking=True)
        grids = torch.cat([batch[i].video_grid_thw for i in items])
        features = self.model.model.get_video_features(pixels, grids.to(self.device))
        layers = getattr(features, "deepstack_features", None) or []
        merge = int(self.model.model.visual.spatial_merge_size)
        for k, (i, (t, h, w)) in enumerate(zip(items, grids.tolist(), strict=True)):
            grid = (t, h // merge, w // merge, -1)
            video = features.pooler_output[k].reshape(grid)
            deepstack = (
                torch.stack([layer[k] for layer in layers]).reshape(len(layers), *grid) if layers else None
            )
            out[i] = (video, deepstack)
        return out

    def encode(self, inputs: ChunkInputs) -> EncodedChunk:
        video, deepstack = self.encode_vision(inputs)
        return EncodedChunk(video=video, audio=self.encode_audio(inputs), deepstack=deepstack)

    # -- text ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @torch.inference_mode()
    def embed_tokens(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.model.get_input_embeddings()
        return table(torch.tensor(list(ids), dtype=torch.long, device=self.device))

    # -- language model --------------------------------------------------------------------

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.get_text_config())

    @torch.inference_mode()
    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        logits: str = "last",
        deepstack: DeepstackFeatures | None = None,
    ) -> torch.Tensor | None:
        """Append (N, d) embeds at (3, N) positions to `cache`; logits of the last token, all
        tokens, or none (a prefill that only fills the cache skips the LM head). The video
        tokens' deepstack features, if any, are added after the first decoder layers as the
        thinker's own forward adds them."""
        injection = {}
        if deepstack is not None:
            injection = {
                "visual_pos_masks": deepstack.mask[None].to(self.device),
                "deepstack_visual_embeds": list(deepstack.features.to(self.device, self.dtype)),
            }
        out = self.model.model.language_model(
            inputs_embeds=embeds[None].to(self.device, self.dtype),
            position_ids=positions[:, None, :].to(self.device),
            past_key_values=cache,
            use_cache=True,
            **injection,
        )
        hidden = out.last_hidden_state[0]
        if logits == "none":
            return None
        if logits == "last":
            hidden = hidden[-1:]
        return self.model.lm_head(hidden).float()

    @torch.inference_mode()
    def forward_batch(self, rows: Sequence[RaggedRow]) -> list[torch.Tensor]:
        """Several streams' new tokens, each appended to its own cache, in one forward; the last
        token's logits of each row (see `ragged`). Text rows only: no deepstack injection."""
        return ragged_forward(self.model.model.language_model, self.model.lm_head, rows)

    @torch.inference_mode()
    def rotate_cache(self, cache: Any, delta: int) -> None:
        """Move every cached key from position p to p - delta, on all three rotary axes.

        RoPE rotates each frequency band by an angle proportional to the position, and a uniform
        shift of all three mRoPE axes rotates every band by -delta times its frequency, whichever
        axis the band follows — in contiguous sections (Qwen2.5) or interleaved (Qwen3-Omni) — so
        this is the cache a prefill at the shifted positions would have built.

        In float32, rounded back once: the angles -delta·ω come from float64 (at delta ~ 30000 a
        float32 angle is off by 2e-3 rad), and the keys are widened before the rotation. Rotating
        bf16 keys with bf16 cos/sin, as the rotary module would return them, loses 0.5% of a key
        per re-base; this loses one bf16 rounding. Keys that live through many re-bases (the
        prompt prefix) are prefilled afresh instead (`StreamSession.rebase`).
        """
        inv_freq = self._rotary.inv_freq.double()
        angles = (-delta) * inv_freq
        cos = torch.cat([angles.cos(), angles.cos()]).float()  # rotate_half's two halves share a band
        sin = torch.cat([angles.sin(), angles.sin()]).float()
        for layer in cache.layers:
            keys = layer.keys
            wide = keys.float()
            half = wide.shape[-1] // 2
            rotated_half = torch.cat((-wide[..., half:], wide[..., :half]), dim=-1)
            layer.keys = (wide * cos.to(wide.device) + rotated_half * sin.to(wide.device)).to(keys.dtype)


def text_positions(start: int, num_tokens: int) -> torch.Tensor:
    """(3, num_tokens) positions counting up from `start` on all three axes, as text is laid."""
    return (start + torch.arange(num_tokens)).expand(3, -1)


def video_grid_positions(
    grid: tuple[int, int, int],
    first_patch: int,
    seconds_per_grid: float,
    positions_per_second: float,
    base: int,
) -> torch.Tensor:
    """(3, T*H*W) positions of a video token grid in flat (t, h, w) order: temporal patch t of the
    stream (`first_patch + t`) at base + ⌊(first_patch + t)·seconds_per_grid·positions_per_second⌋,
    row h at base + h, column w at base + w — the Qwen2.5-VL rule both backbones inherit."""
    grid_t, grid_h, grid_w = grid
    t = ((first_patch + torch.arange(grid_t)) * seconds_per_grid * positions_per_second).long()
    t_idx = t.view(-1, 1, 1).expand(grid_t, grid_h, grid_w)
    h_idx = torch.arange(grid_h).view(1, -1, 1).expand(grid_t, grid_h, grid_w)
    w_idx = torch.arange(grid_w).view(1, 1, -1).expand(grid_t, grid_h, grid_w)
    return torch.stack([t_idx.flatten(), h_idx.flatten(), w_idx.flatten()]) + base
