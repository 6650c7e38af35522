"""video-SALMONN 2+ (tsinghua-ee/video-SALMONN-2_plus_{3B,7B,72B}) as a streaming backbone.

The model (bytedance/video-SALMONN-2, `video_SALMONN2_plus`) is Qwen2.5-VL — vision tower and
Qwen2 decoder, loaded here as transformers' `Qwen2_5_VLForConditionalGeneration` from the same
checkpoint — plus an audio branch saved beside them as `audio.*`: a Whisper-large-v3 encoder and a
window-level Q-Former, 2 audio tokens a second (`salmonn_audio.WindowQFormerAudio`). Preprocessing
is the official pair: the checkpoint's Qwen2-VL video processor and
`WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30)`
over 30 s windows, as the published data pipeline builds them.

Token layout (published `get_rope_index`, audio-visual branch): `<|vision_start|>` closes the
prefix at position b-1; then, for every temporal patch g of the video, its H×W video tokens and
then its share of the audio tokens; `<|vision_end|>` follows. Video token (g, h, w) sits at
(b + ⌊2·g·s⌋, b + h, b + w) with s seconds per temporal patch (1 s at 2 fps); audio token k at
(b + k, b, b + k) — height fixed at the base, time and width counting tokens; the text after the
block starts at the largest temporal position plus one.

Streaming reading (an assumption: the published pipeline encodes whole clips, never streams).
Offline, a clip's audio is padded to whole 30 s windows, each giving 60 tokens spread evenly over
the temporal patches; for a clip of whole 30 s windows that is exactly 2 tokens per 1 s patch, in
step with the video's 2 positions a second. A stream keeps that step: each 2 s chunk's audio is
encoded in a 30 s Whisper window of its own (the chunk, then silence) and keeps the tokens of the
windows it covers (4), laid 2 after each of its 2 temporal patches — so chunk c's audio is tokens
4c…4c+3 of the stream and a 30 s stream has the published offline layout, token for token. Only
the audio encoder's context differs from offline: 2 s of audio instead of the clip's 30 s window.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamguard.backbones.base import BackboneError, ChunkInputs, EncodedChunk, PromptLayout
from streamguard.backbones.decoder import QwenDecoderBackbone, text_positions, video_grid_positions
from streamguard.backbones.loading import (
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
from streamguard.backbones.random_build import instantiate, is_random_build
from streamguard.backbones.salmonn_audio import WindowQFormerAudio, read_checkpoint_tensors
from streamguard.config import ChunkSettings, ModelSettings

log = logging.getLogger("streamguard.backbones")

# The published get_rope_index spaces temporal patches by ⌊2·g·seconds_per_grid⌋: 2 a second.
VIDEO_POSITIONS_PER_SECOND = 2
AUDIO_TOKEN = "<|audio_pad|>"  # added to Qwen2.5-VL's tokenizer by video-SALMONN 2+
# The ChatML template video-SALMONN 2+ sets on its tokenizer for training and inference (its
# `preprocess_qwen_2_visual`), whatever template the checkpoint's tokenizer ships.
TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_VIDEO_SENTINEL = "\u2063VIDEO\u2063"
_QUESTION_SENTINEL = "\u2063QUESTION\u2063"


def split_evenly(count: int, groups: int) -> list[int]:
    """`count` audio tokens over `groups` temporal patches, the published way: the remainder goes
    one each to the first patches."""
    base, remainder = divmod(count, groups)
    return [base + 1] * remainder + [base] * (groups - remainder)


class SalmonnBackbone(QwenDecoderBackbone):
    """video-SALMONN 2+ behind the `Backbone` protocol."""

    def __init__(
        self,
        model: Any,
        audio: WindowQFormerAudio,
        tokenizer: Any,
        video_processor: Any,
        feature_extractor: Any,
        model_id: str,
        settings: ModelSettings,
        chunk: ChunkSettings,
        random_weights: bool = False,
    ):
        super().__init__(model, tokenizer, model_id, settings, chunk, random_weights)
        self.audio = audio
        self.video_processor = video_processor
        self.feature_extractor = feature_extractor
        config = model.config
        self.vision_start_token = tokenizer.convert_ids_to_tokens(config.vision_start_token_id)
        self.vision_end_token = tokenizer.convert_ids_to_tokens(config.vision_end_token_id)
        self.seconds_per_grid = int(video_processor.temporal_patch_size) / chunk.fps
        self.grids_per_chunk = round(chunk.seconds / self.seconds_per_grid)
        self.audio_tokens_per_chunk = audio.tokens_for(chunk.seconds)
        video_step = chunk.seconds * VIDEO_POSITIONS_PER_SECOND
        if self.audio_tokens_per_chunk != video_step:
            raise BackboneError(
                f"a {chunk.seconds} s chunk has {self.audio_tokens_per_chunk} audio tokens but advances the "
                f"video by {video_step:g} positions; video-SALMONN 2+ keeps them in step only at "
                f"{VIDEO_POSITIONS_PER_SECOND} audio tokens a second (second_stride 0.5 s, one query)"
            )
        self._video_kwargs = video_processor_kwargs(settings)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: ModelSettings, chunk: ChunkSettings) -> SalmonnBackbone:
        from transformers import (
            AutoTokenizer,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2VLVideoProcessor,
            WhisperFeatureExtractor,
        )

        path = checkpoint_path(settings.path)
        config = local_config(path)
        needs = "a video-SALMONN 2+ checkpoint (a qwen2_5_vl config with an audio_config)"
        if config is not None:
            check_family(path, config, "video-salmonn2+", needs)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            video_processor = Qwen2VLVideoProcessor.from_pretrained(path)
            random_weights = is_random_build(path)
            # Its audio (Whisper, then a Q-Former per window) runs padded batches, no segment loop.
            attention = attn_implementations(settings, device, dtype, audio_tower_packs=False)
            if random_weights:
                model = instantiate(
                    Qwen2_5_VLForConditionalGeneration,
                    path,
                    dtype=dtype,
                    device=device,
                    attn_implementation=loadable(attention),
                )
            else:
                model = _load_qwen_vl(path, dtype, loadable(attention))
            use_packed_towers(model, attention)
            audio_config = getattr(model.config, "audio_config", None)
            if not isinstance(audio_config, dict):
                raise BackboneError(
                    f"model path {settings.path!r} holds a plain Qwen2.5-VL; the backbone needs {needs}"
                )
            hidden_size = int(model.config.get_text_config().hidden_size)
            if random_weights:  # the audio branch's own initialisation, in place
                with torch.device(device):
                    audio = WindowQFormerAudio(audio_config, hidden_size)
            else:
                with torch.device("meta"):  # weights come from the checkpoint: skip a random init
                    audio = WindowQFormerAudio(audio_config, hidden_size)
                audio.load_published(read_checkpoint_tensors(path, "audio."))
        except OSError as exc:
            raise BackboneError(
                f"cannot load a video-SALMONN 2+ checkpoint from {settings.path!r}: {exc}"
            ) from exc
        # Built as the published data pipeline builds it; the checkpoints ship no config for it.
        feature_extractor = WhisperFeatureExtractor(
            feature_size=audio.num_mel_bins, sampling_rate=16000, hop_length=160, chunk_length=30
        )
        model.to(device).eval()
        audio.to(device, dtype).eval()
        log.info("loaded %s on %s as %s", settings.path, device, dtype)
        return cls(
            model,
            audio,
            tokenizer,
            video_processor,
            feature_extractor,
            settings.path,
            settings,
            chunk,
            random_weights=random_weights or has_random_weights(path),
        )

    # -- preprocessing and encoders --------------------------------------------------------

    def preprocess(self, frames: Sequence[np.ndarray], audio: np.ndarray | None) -> ChunkInputs:
        samples = to_mono_float(audio, self.chunk.samples_per_chunk)
        # One 30 s Whisper window: the chunk's audio, then the extractor's own zero padding. On a
        # GPU the extractor's own torch STFT runs there: a 30 s window costs a CPU core ~0.1 s.
        features = self.feature_extractor(
            samples,
            sampling_rate=self.feature_extractor.sampling_rate,
            return_tensors="pt",
            device=str(self.device),
        )["input_features"][0]
        if not frames:
            return ChunkInputs(None, None, features)
        pixels, grid, resized = process_frames(self.video_processor, frames, self._video_kwargs)
        return ChunkInputs(pixels, grid, features, resized)

    @torch.inference_mode()
    def encode_audios(self, batch: Sequence[ChunkInputs]) -> list[torch.Tensor]:
        """One call of the audio branch over the items' 30 s windows, one batch row each."""
        features = torch.stack([inputs.input_features for inputs in batch]).to(self.device, self.dtype)
        windows = self.audio_tokens_per_chunk // self.audio.query_length
        return list(self.audio(features, windows))

    # -- positions -------------------------------------------------------------------------

    def chunk_period(self) -> int:
        return self.audio_tokens_per_chunk

    def chunk_order(self, encoded: EncodedChunk) -> tuple[torch.Tensor, torch.Tensor]:
        """Each temporal patch's video tokens, then its share of the chunk's audio tokens."""
        num_audio = encoded.audio.shape[0]
        if encoded.video is None:
            return torch.empty(0, dtype=torch.long), torch.arange(num_audio)
        grid_t = encoded.video.shape[0]
        per_patch = encoded.video.shape[1] * encoded.video.shape[2]
        shares = split_evenly(num_audio, grid_t)
        video_rank, audio_rank, rank = [], [], 0
        for share in shares:
            video_rank.append(rank + torch.arange(per_patch))
            audio_rank.append(rank + per_patch + torch.arange(share))
            rank += per_patch + share
        return torch.cat(video_rank), torch.cat(audio_rank)

    def chunk_positions(
        self, encoded: EncodedChunk, slot: int, base: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = base + slot * self.chunk_period()
        steps = start + torch.arange(encoded.audio.shape[0])
        audio = torch.stack([steps, torch.full_like(steps, base), steps])
        if encoded.video is None:
            return torch.empty(3, 0, dtype=torch.long), audio
        video = video_grid_positions(
            tuple(encoded.video.shape[:3]),
            slot * self.grids_per_chunk,
            self.seconds_per_grid,
            VIDEO_POSITIONS_PER_SECOND,
            base,
        )
        return video, audio

    def prefix_positions(self, num_tokens: int) -> tuple[torch.Tensor, int]:
        """Text positions one by one; the stream starts right after `<|vision_start|>`."""
        if num_tokens < 1:
            raise ValueError("the prefix must end with the stream's start marker")
        return text_positions(0, num_tokens), num_tokens

    def question_positions(self, start: int, num_tokens: int) -> torch.Tensor:
        """`<|vision_end|>` at `start` (one past the stream's last temporal position), the rest
        one by one."""
        return text_positions(start, num_tokens)

    # -- text ------------------------------------------------------------------------------

    def prompt_layout(self, system_prompt: str) -> PromptLayout:
        """The training ChatML template around the published prompt, `<video>\\n{question}`."""
        messages = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": f"{_VIDEO_SENTINEL}\n{_QUESTION_SENTINEL}"},
        ]
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=TRAINING_CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
        )
        before_video, after_video = text.split(_VIDEO_SENTINEL)
        between, suffix = after_video.split(_QUESTION_SENTINEL)
        return PromptLayout(
            prefix=self.tokenize(before_video + self.vision_start_token),
            close=self.tokenize(self.vision_end_token + between),
            suffix=self.tokenize(suffix),
        )


class _WithoutLoadReport(logging.Filter):
    """transformers reports every `audio.*` weight as unexpected: they are not Qwen2.5-VL's. The
    loading info is checked instead (`_load_qwen_vl`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _load_qwen_vl(path: str, dtype: torch.dtype, attn_implementation: dict[str, str]) -> Any:
    """The checkpoint's Qwen2.5-VL part through `from_pretrained`; anything missing is an error."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.modeling_utils import logger as transformers_logger

    quiet = _WithoutLoadReport()
    transformers_logger.addFilter(quiet)
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True
        )
    finally:
        transformers_logger.removeFilter(quiet)
    if info["missing_keys"] or info["mismatched_keys"]:
        missing = sorted(info["missing_keys"]) or sorted(str(k) for k in info["mismatched_keys"])
        raise BackboneError(
            f"model path {path!r} lacks or mismatches {len(missing)} Qwen2.5-VL weights ({missing[0]}, …)"
        )
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith("audio."))
    if unexpected:
        log.warning("ignored %d unknown weights in %s (%s, …)", len(unexpected), path, unexpected[0])
    return model
