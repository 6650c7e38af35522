"""Qwen2.5-Omni's thinker (`Qwen2_5OmniThinkerForConditionalGeneration`) as a streaming backbone,
on the half every Qwen Omni thinker shares (`OmniThinkerBackbone`; Qwen3-Omni: qwen3_omni.py).

The talker is never loaded. Preprocessing goes through the checkpoint's own processor
components (its video processor and Whisper feature extractor), so a chunk is exactly what
`Qwen2_5OmniProcessor` would produce for the same frames and audio.

Token layout (transformers' `get_rope_index` with `use_audio_in_video=True`): after
`<|vision_bos|><|audio_bos|>` at position b-1 the stream starts at base b; chunk c is its video
tokens then its audio tokens. Video token (f, h, w) sits at (b + 25·(2c+f)·s, b + h, b + w) with
s = seconds per temporal patch (1 s at 2 fps), audio token k at b + 50c + k on all three axes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import torch

from streamguard.backbones.base import BackboneError, ChunkInputs, EncodedChunk, PromptLayout
from streamguard.backbones.decoder import QwenDecoderBackbone, video_grid_positions
from streamguard.backbones.loading import (
    THINKER_FAMILIES,
    attn_implementations,
    check_family,
    checkpoint_path,
    has_random_weights,
    loadable,
    local_config,
    resolve_device,
    resolve_dtype,
    use_packed_towers,
)
from streamguard.backbones.media import process_frames, to_mono_float, video_processor_kwargs
from streamguard.backbones.random_build import instantiate
from streamguard.config import ChunkSettings, ModelSettings

log = logging.getLogger("streamguard.backbones")

_QUESTION_SENTINEL = "\u2063QUESTION\u2063"


class OmniThinkerBackbone(QwenDecoderBackbone):
    """What the Qwen Omni thinkers share: loading the thinker alone with the checkpoint's own
    processor, preprocessing through its video processor and feature extractor, the audio
    encoder, and the chat template's split around the stream. A subclass names its transformers
    class and family and lays a chunk's tokens out."""

    thinker_class: str  # the transformers class of the thinker
    family: str  # the `model.backbone` setting

    def __init__(
        self,
        model: Any,
        processor: Any,
        model_id: str,
        settings: ModelSettings,
        chunk: ChunkSettings,
        random_weights: bool = False,
    ):
        super().__init__(model, processor.tokenizer, model_id, settings, chunk, random_weights)
        self.processor = processor
        self.position_id_per_seconds = int(model.config.position_id_per_seconds)
        video_processor = processor.video_processor
        self.temporal_patch_size = int(video_processor.temporal_patch_size)
        self.seconds_per_grid = self.temporal_patch_size / chunk.fps
        self._video_kwargs = video_processor_kwargs(settings)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def check_checkpoint(cls, path: str) -> None:
        """Fail early, and clearly, on a local path that is missing or holds another kind of model."""
        config = local_config(path)
        if config is not None:
            types = sorted(t for t, family in THINKER_FAMILIES.items() if family == cls.family)
            check_family(path, config, cls.family, f"a {cls.family} checkpoint (model_type one of {types})")

    @classmethod
    def from_settings(cls, settings: ModelSettings, chunk: ChunkSettings) -> Self:
        import transformers

        path = checkpoint_path(settings.path)
        cls.check_checkpoint(path)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        try:
            processor = transformers.AutoProcessor.from_pretrained(path)
            attention = attn_implementations(settings, device, dtype)
            model = instantiate(
                getattr(transformers, cls.thinker_class),
                path,
                dtype=dtype,
                device=device,
                attn_implementation=loadable(attention),
            )
        except OSError as exc:
            raise BackboneError(
                f"cannot load a {cls.family} checkpoint from {settings.path!r}: {exc}"
            ) from exc
        use_packed_towers(model, attention)
        model.to(device).eval()
        log.info("loaded %s on %s as %s", settings.path, device, dtype)
        return cls(model, processor, settings.path, settings, chunk, random_weights=has_random_weights(path))

    # -- preprocessing and encoders --------------------------------------------------------

    def preprocess(self, frames: Sequence[np.ndarray], audio: np.ndarray | None) -> ChunkInputs:
        features = self._audio_features(to_mono_float(audio, self.chunk.samples_per_chunk))
        if not frames:
            return ChunkInputs(None, None, features)
        pixels, grid, resized = process_frames(self.processor.video_processor, frames, self._video_kwargs)
        return ChunkInputs(pixels, grid, features, resized)

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
    def encode_audios(self, batch: Sequence[ChunkInputs]) -> list[torch.Tensor]:
        """One audio-tower call per log-mel length (every chunk has the same: one call): the items
        side by side with a full mask; the tower cuts each item by its own length, so none sees
        another, and each gives the same number of tokens."""
        tokens: list[torch.Tensor | None] = [None] * len(batch)
        by_length: dict[int, list[int]] = {}
        for i, inputs in enumerate(batch):
            by_length.setdefault(int(inputs.input_features.shape[-1]), []).append(i)
        for length, items in by_length.items():
            features = torch.stack([batch[i].input_features for i in items])
            mask = torch.ones(len(items), length, dtype=torch.long)
            out = self.model.model.get_audio_features(
                features.to(self.device, self.dtype, non_blocking=True),
                feature_attention_mask=mask.to(self.device),
            ).last_hidden_state
            for i, item_tokens in zip(items, out.reshape(len(items), -1, out.shape[-1]), strict=True):
                tokens[i] = item_tokens
        return tokens  # type: ignore[return-value]  # every item filled

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


class QwenOmniBackbone(OmniThinkerBackbone):
    """The Qwen2.5-Omni thinker behind the `Backbone` protocol."""

    thinker_class = "Qwen2_5OmniThinkerForConditionalGeneration"
    family = "qwen2.5-omni"

    def __init__(
        self,
        model: Any,
        processor: Any,
        model_id: str,
        settings: ModelSettings,
        chunk: ChunkSettings,
        random_weights: bool = False,
    ):
        super().__init__(model, processor, model_id, settings, chunk, random_weights)
        self.seconds_per_chunk = float(model.config.seconds_per_chunk)
        if abs(self.seconds_per_chunk - chunk.seconds) > 1e-9:
            raise BackboneError(
                f"the checkpoint interleaves audio and video every {self.seconds_per_chunk} s but the "
                f"chunker cuts {chunk.seconds} s chunks; set chunk.seconds to {self.seconds_per_chunk}"
            )

    # -- positions -------------------------------------------------------------------------

    def chunk_period(self) -> int:
        return round(self.position_id_per_seconds * self.seconds_per_chunk)

    def chunk_order(self, encoded: EncodedChunk) -> tuple[torch.Tensor, torch.Tensor]:
        """All the chunk's video tokens, then all its audio tokens."""
        num_video = encoded.num_video_tokens
        return torch.arange(num_video), num_video + torch.arange(encoded.audio.shape[0])

    def chunk_positions(
        self, encoded: EncodedChunk, slot: int, base: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = base + slot * self.chunk_period()
        num_audio = encoded.audio.shape[0]
        audio = torch.arange(start, start + num_audio).expand(3, -1)
        if encoded.video is None:
            return torch.empty(3, 0, dtype=torch.long), audio
        grid = tuple(encoded.video.shape[:3])
        first_patch = slot * round(self.seconds_per_chunk / self.seconds_per_grid)
        video = video_grid_positions(
            grid, first_patch, self.seconds_per_grid, self.position_id_per_seconds, base
        )
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
