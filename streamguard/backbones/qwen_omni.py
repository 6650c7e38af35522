"""Qwen2.5-Omni's thinker (`Qwen2_5OmniThinkerForConditionalGeneration`) as a streaming backbone.

The talker is never loaded. Preprocessing goes through the checkpoint's own processor
components (its video processor and Whisper feature extractor), so a chunk is exactly what
`Qwen2_5OmniProcessor` would produce for the same frames and audio.

Token layout (transformers' `get_rope_index` with `use_audio_in_video=True`): after
`<|vision_bos|><|audio_bos|>` at position b-1 the stream starts at base b; chunk c is its video
tokens then its audio tokens. Video token (f, h, w) sits at (b + 25·(2c+f)·s, b + h, b + w) with
s = seconds per temporal patch (1 s at 2 fps), audio token k at b + 50c + k on all three axes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamguard.backbones.base import BackboneError, ChunkInputs, EncodedChunk, PromptLayout
from streamguard.backbones.tiny import TINY_PREFIX, resolve_tiny
from streamguard.config import ChunkSettings, ModelSettings

log = logging.getLogger("streamguard.backbones")

OMNI_MODEL_TYPES = {"qwen2_5_omni", "qwen2_5_omni_thinker"}
_QUESTION_SENTINEL = "\u2063QUESTION\u2063"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def check_omni_checkpoint(path: str) -> None:
    """Fail early, and clearly, on a local path that is missing or holds another kind of model."""
    folder = Path(path)
    looks_local = folder.is_absolute() or path.startswith(".") or folder.exists()
    if not looks_local:
        return  # a hub id: from_pretrained reports what it cannot find
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BackboneError(f"model path {path!r} has no config.json: not a transformers checkpoint folder")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in OMNI_MODEL_TYPES:
        raise BackboneError(
            f"model path {path!r} holds a {model_type!r} model; the qwen2.5-omni backbone needs a "
            f"Qwen2.5-Omni checkpoint (model_type one of {sorted(OMNI_MODEL_TYPES)})"
        )


def _to_rgb(frame: np.ndarray) -> np.ndarray:
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


def _to_mono_float(audio: np.ndarray | None, length: int) -> np.ndarray:
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


class QwenOmniBackbone:
    """The Qwen2.5-Omni thinker behind the `Backbone` protocol."""

    def __init__(
        self, model: Any, processor: Any, model_id: str, settings: ModelSettings, chunk: ChunkSettings
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_id = model_id
        self.settings = settings
        self.chunk = chunk
        config = model.config
        text_config = config.get_text_config()
        self.hidden_size = int(text_config.hidden_size)
        self.max_positions = int(text_config.max_position_embeddings)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.position_id_per_seconds = int(config.position_id_per_seconds)
        self.seconds_per_chunk = float(config.seconds_per_chunk)
        if abs(self.seconds_per_chunk - chunk.seconds) > 1e-9:
            raise BackboneError(
                f"the checkpoint interleaves audio and video every {self.seconds_per_chunk} s but the "
                f"chunker cuts {chunk.seconds} s chunks; set chunk.seconds to {self.seconds_per_chunk}"
            )
        video_processor = processor.video_processor
        self.temporal_patch_size = int(video_processor.temporal_patch_size)
        self.merge_size = int(video_processor.merge_size)
        self.seconds_per_grid = self.temporal_patch_size / chunk.fps
        self._video_kwargs: dict[str, Any] = {"do_sample_frames": False, "cap_pixels_per_frame": False}
        if settings.min_pixels is not None and settings.max_pixels is not None:
            self._video_kwargs["size"] = {
                "shortest_edge": settings.min_pixels,
                "longest_edge": settings.max_pixels,
            }
        self.eos_token_ids = {self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)
        self._rotary = model.model.language_model.rotary_emb

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: ModelSettings, chunk: ChunkSettings) -> QwenOmniBackbone:
        from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

        path = resolve_tiny(settings.path) if settings.path.startswith(TINY_PREFIX) else settings.path
        check_omni_checkpoint(path)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        try:
            processor = AutoProcessor.from_pretrained(path)
            model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
                path, dtype=dtype, attn_implementation=settings.attn_implementation
            )
        except OSError as exc:
            raise BackboneError(
                f"cannot load a Qwen2.5-Omni checkpoint from {settings.path!r}: {exc}"
            ) from exc
        model.to(device).eval()
        log.info("loaded %s on %s as %s", settings.path, device, dtype)
        return cls(model, processor, settings.path, settings, chunk)

    # -- preprocessing and encoders --------------------------------------------------------

    def preprocess(self, frames: Sequence[np.ndarray], audio: np.ndarray | None) -> ChunkInputs:
        features = self._audio_features(_to_mono_float(audio, self.chunk.samples_per_chunk))
        if not frames:
            return ChunkInputs(None, None, features)
        rgb = [_to_rgb(f) for f in frames]
        height, width = rgb[0].shape[:2]
        if any(f.shape[:2] != (height, width) for f in rgb):
            # A resolution change mid-chunk (a camera renegotiating): the chunk takes its first
            # frame's size, as one video tensor must have one size.
            rgb = [_resize_uint8(f, height, width) for f in rgb]
        out = self.processor.video_processor(
            videos=[np.stack(rgb)], return_tensors="pt", **self._video_kwargs
        )
        grid = out["video_grid_thw"]
        patch = int(self.processor.video_processor.patch_size)
        resized = (int(grid[0, 1]) * patch, int(grid[0, 2]) * patch)
        return ChunkInputs(out["pixel_values_videos"], grid, features, resized)

    def _audio_features(self, audio: np.ndarray) -> torch.Tensor:
        extractor = self.processor.feature_extractor
        frames = audio.shape[0] // extractor.hop_length
        # Zero padding past the chunk's end, as the processor's own padding does, so the last
        # frames see the same samples; two windows of zeros is enough to match it exactly.
        padded = audio.shape[0] + 2 * extractor.n_fft
        out = extractor(
            audio,
            sampling_rate=extractor.sampling_rate,
            padding="max_length",
            max_length=padded,
            return_attention_mask=False,
            return_tensors="pt",
        )
        return out["input_features"][0, :, :frames]

    @torch.inference_mode()
    def encode_audio(self, inputs: ChunkInputs) -> torch.Tensor:
        features = inputs.input_features.to(self.device, self.dtype)
        mask = torch.ones(1, features.shape[-1], dtype=torch.long, device=self.device)
        return self.model.model.get_audio_features(features[None], feature_attention_mask=mask).last_hidden_state

    @torch.inference_mode()
    def encode_video(self, inputs: ChunkInputs) -> torch.Tensor | None:
        if inputs.pixel_values_videos is None:
            return None
        pixels = inputs.pixel_values_videos.to(self.device)
        flat = self.model.model.get_video_features(pixels, inputs.video_grid_thw.to(self.device)).pooler_output[0]
        t, h, w = (int(x) for x in inputs.video_grid_thw[0])
        return flat.reshape(t, h // self.merge_size, w // self.merge_size, -1)

    def encode(self, inputs: ChunkInputs) -> EncodedChunk:
        return EncodedChunk(video=self.encode_video(inputs), audio=self.encode_audio(inputs))

    # -- positions -------------------------------------------------------------------------

    def chunk_period(self) -> int:
        return round(self.position_id_per_seconds * self.seconds_per_chunk)

    def chunk_positions(
        self, encoded: EncodedChunk, slot: int, base: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = base + slot * self.chunk_period()
        num_audio = encoded.audio.shape[0]
        audio = torch.arange(start, start + num_audio).expand(3, -1)
        if encoded.video is None:
            return torch.empty(3, 0, dtype=torch.long), audio
        grid_t, grid_h, grid_w = encoded.video.shape[:3]
        first_patch = slot * round(self.seconds_per_chunk / self.seconds_per_grid)
        t = (
            (first_patch + torch.arange(grid_t)) * self.seconds_per_grid * self.position_id_per_seconds
        ).long()
        t_idx = t.view(-1, 1, 1).expand(grid_t, grid_h, grid_w)
        h_idx = torch.arange(grid_h).view(1, -1, 1).expand(grid_t, grid_h, grid_w)
        w_idx = torch.arange(grid_w).view(1, 1, -1).expand(grid_t, grid_h, grid_w)
        video = torch.stack([t_idx.flatten() + base, h_idx.flatten() + base, w_idx.flatten() + base])
        return video, audio

    def prefix_positions(self, num_tokens: int) -> tuple[torch.Tensor, int]:
        """Positions of the prefix and the stream's base: `<|vision_bos|><|audio_bos|>` close the
        prefix and share one position, as `get_rope_index` lays them."""
        if num_tokens < 2:
            raise ValueError("the prefix must end with the two stream markers")
        steps = torch.arange(num_tokens - 1)
        flat = torch.cat([steps, steps[-1:]])
        return flat.expand(3, -1), int(flat[-1]) + 1

    def question_positions(self, start: int, num_tokens: int) -> torch.Tensor:
        """Positions from the stream's end on: `<|audio_eos|><|vision_eos|>` share `start`, the
        question and the assistant's opening follow one by one."""
        flat = torch.cat([torch.tensor([start]), start + torch.arange(num_tokens - 1)])
        return flat.expand(3, -1)

    # -- text ------------------------------------------------------------------------------

    def prompt_layout(self, system_prompt: str) -> PromptLayout:
        """Split the checkpoint's own chat template around the stream and the question."""
        tok = self.tokenizer
        messages = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": _QUESTION_SENTINEL}]},
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        video_block = tok.vision_bos_token + tok.video_token + tok.vision_eos_token
        if text.count(video_block) != 1 or text.count(_QUESTION_SENTINEL) != 1:
            raise BackboneError("the checkpoint's chat template does not lay a video before the question")
        before_video, after_video = text.split(video_block)
        between, suffix = after_video.split(_QUESTION_SENTINEL)
        return PromptLayout(
            prefix=self.tokenize(before_video + tok.vision_bos_token + tok.audio_bos_token),
            close=self.tokenize(tok.audio_eos_token + tok.vision_eos_token + between),
            suffix=self.tokenize(suffix),
        )

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
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any, logits: str = "last"
    ) -> torch.Tensor | None:
        """Append (N, d) embeds at (3, N) positions to `cache`; logits of the last token, all
        tokens, or none (a prefill that only fills the cache skips the LM head)."""
        out = self.model.model.language_model(
            inputs_embeds=embeds[None].to(self.device, self.dtype),
            position_ids=positions[:, None, :].to(self.device),
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[0]
        if logits == "none":
            return None
        if logits == "last":
            hidden = hidden[-1:]
        return self.model.lm_head(hidden).float()

    @torch.inference_mode()
    def rotate_cache(self, cache: Any, delta: int) -> None:
        """Move every cached key from position p to p - delta, on all three rotary axes.

        RoPE rotates each frequency band by an angle proportional to the position, and a uniform
        shift of all three mRoPE axes rotates every band by -delta times its frequency, so this is
        exactly the cache a prefill at the shifted positions would have built.
        """
        for layer in cache.layers:
            keys = layer.keys
            shift = torch.full((3, 1, keys.shape[-2]), -delta, dtype=torch.long, device=keys.device)
            cos, sin = self._rotary(keys, shift)
            cos, sin = cos[:, None], sin[:, None]  # (1, 1, N, head_dim), broadcast over heads
            half = keys.shape[-1] // 2
            rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
            layer.keys = keys * cos + rotated_half * sin


def _resize_uint8(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
