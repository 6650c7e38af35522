"""What the stream session needs from an Omni-LLM: the `Backbone` protocol and its data types."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

# What a tiny or random: build is good for, said the same way in logs, the CLI and the bench report.
RANDOM_WEIGHTS_NOTE = (
    "random weights: its answers are noise; its costs (time, memory, tokens, streams) are the architecture's"
)


class BackboneError(ValueError):
    """A model path or config that cannot serve as this backbone."""


@dataclass
class ChunkInputs:
    """One chunk preprocessed into the model's encoder inputs (the official processor's output)."""

    pixel_values_videos: torch.Tensor | None  # (grid_t*grid_h*grid_w, C*tp*p*p), None: no video
    video_grid_thw: torch.Tensor | None  # (1, 3) in patches, before the spatial merge
    # (num_mel_bins, frames) log-mel the audio encoder reads: Qwen2.5-Omni the chunk's 200 frames,
    # video-SALMONN 2+ a 30 s Whisper window of 3000 (the chunk, then silence)
    input_features: torch.Tensor
    resized_hw: tuple[int, int] | None = None  # frame size after smart_resize, for overlays


@dataclass
class EncodedChunk:
    """One chunk's tokens in the LLM embedding space.

    `video` is (F, H, W, d): F temporal patches, H×W the merged grid; its flat order
    f*H*W + h*W + w is the order the backbone lays the tokens into the sequence.
    `deepstack` (Qwen3-Omni) is (K, F, H, W, d): what the vision tower's K deepstack mergers add to
    each video token's hidden state after the first K decoder layers; None for other models.
    """

    video: torch.Tensor | None
    audio: torch.Tensor  # (L, d)
    deepstack: torch.Tensor | None = None

    @property
    def video_flat(self) -> torch.Tensor | None:
        return None if self.video is None else self.video.reshape(-1, self.video.shape[-1])

    @property
    def deepstack_flat(self) -> torch.Tensor | None:
        """(K, F*H*W, d), in `video_flat`'s token order."""
        if self.deepstack is None:
            return None
        return self.deepstack.reshape(self.deepstack.shape[0], -1, self.deepstack.shape[-1])

    @property
    def num_video_tokens(self) -> int:
        return (
            0 if self.video is None else int(self.video.shape[0] * self.video.shape[1] * self.video.shape[2])
        )


@dataclass
class DeepstackFeatures:
    """The deepstack features of the video tokens in one forward's input, in sequence order."""

    mask: torch.Tensor  # (N,) bool: which of the forward's N tokens are video tokens
    features: torch.Tensor  # (K, mask.sum(), d): added to them after decoder layers 0…K-1


@dataclass
class PromptLayout:
    """Token ids of the fixed text around the stream, split where the stream and question go.

    prefix: system prompt and the user turn's opening up to the stream's start markers;
    close: the stream's end markers and anything the chat template puts before the question;
    suffix: the end of the user turn and the assistant's opening.
    """

    prefix: list[int]
    close: list[int]
    suffix: list[int]


@runtime_checkable
class Backbone(Protocol):
    """An Omni-LLM as the stream session drives it.

    Positions are (3, N) long tensors: the temporal, height and width rotary axes. A chunk's
    positions are relative to `base`, the first position after the prefix, so the session can
    lay any chunk anywhere.
    """

    model_id: str
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    max_positions: int
    eos_token_ids: set[int]
    random_weights: bool  # a tiny or random: build: answers are noise, costs are real

    def preprocess(self, frames: Sequence[np.ndarray], audio: np.ndarray) -> ChunkInputs: ...

    def encode_video(self, inputs: ChunkInputs) -> torch.Tensor | None:
        """(F, H, W, d) video tokens in the LLM space, None for a chunk without frames."""
        ...

    def encode_vision(self, inputs: ChunkInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The video tokens and, from one run of the vision tower, their (K, F, H, W, d) deepstack
        features (None for a model without deepstack)."""
        ...

    def encode_audio(self, inputs: ChunkInputs) -> torch.Tensor:
        """(L, d) audio tokens in the LLM space."""
        ...

    def encode_visions(
        self, batch: Sequence[ChunkInputs]
    ) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """`encode_vision` of several chunks in one vision-encoder call."""
        ...

    def encode_audios(self, batch: Sequence[ChunkInputs]) -> list[torch.Tensor]:
        """`encode_audio` of several chunks in one audio-encoder call."""
        ...

    def encode(self, inputs: ChunkInputs) -> EncodedChunk: ...

    def chunk_order(self, encoded: EncodedChunk) -> tuple[torch.Tensor, torch.Tensor]:
        """(video (F*H*W,), audio (L,)) ranks of a chunk's tokens in its sequence: the session lays
        the tokens it keeps in ascending rank (Qwen2.5-Omni: all video, then all audio)."""
        ...

    def chunk_positions(
        self, encoded: EncodedChunk, slot: int, base: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(video (3, F*H*W), audio (3, L)) positions of a chunk laid as the `slot`-th of the stream."""
        ...

    def chunk_period(self) -> int:
        """How far one chunk advances the temporal axis."""
        ...

    def prefix_positions(self, num_tokens: int) -> tuple[torch.Tensor, int]:
        """(3, num_tokens) positions of the prompt prefix, and the stream's base position."""
        ...

    def question_positions(self, start: int, num_tokens: int) -> torch.Tensor:
        """(3, num_tokens) positions of the stream's close, a question and the assistant opening."""
        ...

    def prompt_layout(self, system_prompt: str) -> PromptLayout: ...

    def tokenize(self, text: str) -> list[int]: ...

    def embed_tokens(self, ids: Sequence[int]) -> torch.Tensor: ...

    def new_cache(self) -> Any: ...

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        logits: str = "last",
        deepstack: DeepstackFeatures | None = None,
    ) -> torch.Tensor | None:
        """Run the language model over (N, d) embeds at (3, N) positions, appending to `cache`;
        return the logits of the last token ("last"), of every token ("all") or none ("none").
        `deepstack` carries the video tokens' deepstack features on a model that has them."""
        ...

    def forward_batch(self, rows: Sequence[Any]) -> list[torch.Tensor]:
        """Several streams' `forward`s in one: each row (`RaggedRow`: embeds, positions, its own
        cache) is appended to its cache; the last token's logits of each row."""
        ...

    def rotate_cache(self, cache: Any, delta: int) -> None:
        """Move every cached key from position p to p - delta on all rotary axes, in place."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...
