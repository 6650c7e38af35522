"""Qwen3-Omni's thinker (`Qwen3OmniMoeThinkerForConditionalGeneration`) as a streaming backbone.

The talker and code2wav are never loaded: `from_pretrained` of the thinker class reads the
`thinker_config` and the `thinker.*` weights of a whole Qwen3-Omni checkpoint. Preprocessing goes
through the checkpoint's own video processor and Whisper feature extractor, as for Qwen2.5-Omni
(`OmniThinkerBackbone`), so a chunk is what `Qwen3OmniMoeProcessor` makes of the same media.

How a chunk maps to the model's groups. The processor (`load_audio_from_video`) and the thinker's
`get_rope_index(use_audio_in_video=True)` lay a video with its audio by timestamp: each group of
`temporal_patch_size` (2) frames sits at its start time, followed by the audio tokens up to the
next group, with time counted in position ids, `position_id_per_seconds` (p, 13 in the released
checkpoint, read from its config) a second, one per audio token (the audio encoder makes 13
tokens a second). A 2 s chunk at 2 fps is 2 whole groups (1 s each) and 26 audio tokens, and
advances time by exactly 26 positions, so chunk c holds groups 2c and 2c+1 and audio tokens
26c…26c+25 of the stream, and a stream of N chunks is, token for token and position for position,
the official layout of its 2N-second clip.

Worked example (as `get_rope_index`'s docstring): a stream whose frames give H×W = 2×3 merged
tokens (32 px each); `<|vision_start|><|audio_start|>` close the prefix at b-2 and b-1, so the
stream starts at base b. Chunk 0, with all positions less b:

    tokens:   V V V V V V  A A … A   V  V  V  V  V  V   A  A  … A
    group:    0 (t = 0 s)  audio 0-12 1 (t = 1 s)        audio 13-25
    temporal: 0 0 0 0 0 0  0 1 … 12  13 13 13 13 13 13  13 14 … 25
    height:   0 0 0 1 1 1  0 1 … 12  0  0  0  1  1  1   13 14 … 25
    width:    0 1 2 0 1 2  0 1 … 12  0  1  2  0  1  2   13 14 … 25

Chunk c is the same with 26c added to every temporal position and to all three of each audio
token's (video height and width stay b+h, b+w). After N chunks `<|audio_end|><|vision_end|>` sit
at b+26N and b+26N+1 and the question follows one position a token. A video token at temporal
position t goes before an audio token at t (the processor's tie rule).

Deepstack: the vision tower's deepstack mergers (features taken after its blocks 8, 16 and 24 in
the release) give each video token K more features, which the decoder adds to that token's hidden
state after its layers 0…K-1. The chunk carries them (`EncodedChunk.deepstack`); the session keeps
those of the video tokens it keeps and `forward` injects them, as the thinker's own forward does.

Re-basing: Qwen3-Omni's mRoPE interleaves the three axes over the frequency bands (T H W T H W …)
where Qwen2.5 gives each axis a section; a uniform shift of all three axes rotates every band by
the same angle either way, so the shared `rotate_cache` through the model's own rotary module
holds (see decoder.py).

Streaming reading: each chunk's 2 s of audio is encoded alone. Offline, the audio encoder attends
within windows of `n_window_infer` mel frames (800, 8 s, in the release), so a stream's audio
tokens see 2 s of context where an offline clip's see up to 8 s; the video tower attends within
each 2-frame group either way. The parity tests feed both sides the same encoded tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from streamguard.backbones.base import BackboneError, EncodedChunk
from streamguard.backbones.decoder import text_positions, video_grid_positions
from streamguard.backbones.qwen_omni import OmniThinkerBackbone
from streamguard.config import ChunkSettings, ModelSettings


class Qwen3OmniBackbone(OmniThinkerBackbone):
    """The Qwen3-Omni thinker behind the `Backbone` protocol."""

    thinker_class = "Qwen3OmniMoeThinkerForConditionalGeneration"
    family = "qwen3-omni"

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
        config = model.config
        if getattr(config, "vision_start_token_id", None) is None:
            raise BackboneError(
                f"model path {model_id!r}: the thinker config has no vision_start_token_id, which "
                "get_rope_index needs to find the stream (the released checkpoint's config has it)"
            )
        processor_rate = float(getattr(processor, "position_id_per_seconds", self.position_id_per_seconds))
        if processor_rate != self.position_id_per_seconds:
            raise BackboneError(
                f"the processor interleaves at {processor_rate:g} position ids a second but the thinker "
                f"lays positions at {self.position_id_per_seconds}; the checkpoint is inconsistent"
            )
        self.grids_per_chunk, remainder = divmod(chunk.frames_per_chunk, self.temporal_patch_size)
        group_step = self.seconds_per_grid * self.position_id_per_seconds
        self.audio_tokens_per_chunk = _audio_tokens(processor, config, chunk)
        period = chunk.seconds * self.position_id_per_seconds
        if remainder or group_step != round(group_step) or self.audio_tokens_per_chunk != period:
            raise BackboneError(
                f"a {chunk.seconds:g} s chunk at {chunk.fps:g} fps is {chunk.frames_per_chunk} frames "
                f"(groups of {self.temporal_patch_size}), {self.audio_tokens_per_chunk} audio tokens and "
                f"{period:g} position ids; Qwen3-Omni's timestamp interleaving needs whole groups a whole "
                "number of position ids apart and one audio token per position id: use whole seconds "
                f"and an fps that makes whole groups (chunk.seconds 2, chunk.fps 2)"
            )

    # -- positions -------------------------------------------------------------------------

    def chunk_period(self) -> int:
        return self.audio_tokens_per_chunk

    def chunk_order(self, encoded: EncodedChunk) -> tuple[torch.Tensor, torch.Tensor]:
        """By timestamp: each video group, then the audio up to the next group (a video token
        before an audio token at the same time), as the processor merges them."""
        video, audio = self.chunk_positions(encoded, 0, 0)
        keys = torch.cat([2 * video[0], 2 * audio[0] + 1])
        rank = torch.empty_like(keys)
        rank[torch.argsort(keys, stable=True)] = torch.arange(keys.numel())
        return rank[: video.shape[1]], rank[video.shape[1] :]

    def chunk_positions(
        self, encoded: EncodedChunk, slot: int, base: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        audio = text_positions(base + slot * self.chunk_period(), encoded.audio.shape[0])
        if encoded.video is None:
            return torch.empty(3, 0, dtype=torch.long), audio
        video = video_grid_positions(
            tuple(encoded.video.shape[:3]),
            slot * self.grids_per_chunk,
            self.seconds_per_grid,
            self.position_id_per_seconds,
            base,
        )
        return video, audio

    def prefix_positions(self, num_tokens: int) -> tuple[torch.Tensor, int]:
        """Text positions one by one, `<|vision_start|><|audio_start|>` included; the stream starts
        right after them."""
        if num_tokens < 2:
            raise ValueError("the prefix must end with the two stream markers")
        return text_positions(0, num_tokens), num_tokens

    def question_positions(self, start: int, num_tokens: int) -> torch.Tensor:
        """`<|audio_end|><|vision_end|>` at `start` (one past the last audio token) and `start`+1,
        the question and the assistant's opening one by one after them."""
        return text_positions(start, num_tokens)


def _audio_tokens(processor: Any, config: Any, chunk: ChunkSettings) -> int:
    """Audio tokens of one chunk, by the thinker's own count; a chunk must be whole encoder windows
    (2·n_window mel frames), or the stream's tokens would not be the clip's."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    window = 2 * int(config.audio_config.n_window)
    mel_frames = chunk.samples_per_chunk // int(processor.feature_extractor.hop_length)
    if mel_frames % window:
        raise BackboneError(
            f"a {chunk.seconds:g} s chunk is {mel_frames} mel frames; the audio encoder works in windows "
            f"of {window}: chunk.seconds must cut whole windows"
        )
    return int(_get_feat_extract_output_lengths(torch.tensor(mel_frames), int(config.audio_config.n_window)))
