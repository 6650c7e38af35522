"""Comparison methods (paper §3.1, Table 4) behind one entry point, `select_for_method`.

- "none": every video token (full-token reference);
- "contextguard": `select_tokens` with the given reference (ĥ_t from the A2V predictor);
- "random": a uniformly random set of exactly `match_keep` tokens (default: as many as ContextGuard
  keeps for the same chunk), i.e. the matched-ratio Random baseline;
- "high": Table 4's ablation — keep the HIGHEST-similarity fraction, union the same spatial branch;
- "mean_audio": ContextGuard with the mean audio embedding as reference (the paper's "orig").
"""

from __future__ import annotations

from typing import Final, get_args

import torch

from streamguard.config import PruningMethod
from streamguard.pruning.a2v import mean_audio_reference
from streamguard.pruning.select import (
    Selection,
    select_semantic,
    select_spatial,
    select_tokens,
    semantic_scores,
)

Method = PruningMethod
METHODS: Final[frozenset[str]] = frozenset(get_args(Method))


def select_full(num_tokens: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All flat indices 0..num_tokens-1."""
    return torch.arange(num_tokens, device=device)


def select_random(num_tokens: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """`keep` distinct indices drawn uniformly with `generator`, sorted, on the generator's device."""
    if not 0 <= keep <= num_tokens:
        raise ValueError(f"cannot keep {keep} of {num_tokens} tokens")
    permutation = torch.randperm(num_tokens, generator=generator, device=generator.device)
    return torch.sort(permutation[:keep]).values


def select_high_similarity(scores: torch.Tensor, rho: float) -> torch.Tensor:
    """The `rho` fraction with the HIGHEST scores (same count and lower-index tie rule as the semantic branch)."""
    return select_semantic(-scores, rho)


def _reference(reference_or_audio: torch.Tensor) -> torch.Tensor:
    # A (d,) reference is used as given; a chunk's (L, d) audio stands for its mean embedding.
    return reference_or_audio if reference_or_audio.dim() == 1 else mean_audio_reference(reference_or_audio)


def select_for_method(
    method: Method,
    video: torch.Tensor,
    reference_or_audio: torch.Tensor,
    rho_sem: float,
    rho_spa: float,
    generator: torch.Generator | None = None,
    match_keep: int | None = None,
) -> Selection:
    """One chunk's selection under `method`; `video` is (F, H, W, d).

    `reference_or_audio` is the (d,) reference vector, or the chunk's (L, d) audio, which stands for
    its mean embedding; "mean_audio" requires the audio. "random" needs `generator`.
    """
    num_tokens = video.shape[0] * video.shape[1] * video.shape[2]
    if method == "none":
        everything = select_full(num_tokens, video.device)
        return Selection.from_indices(num_tokens, everything, everything[:0])
    if method == "mean_audio" and reference_or_audio.dim() != 2:
        raise ValueError(
            f"'mean_audio' needs the chunk's (L, d) audio, got shape {tuple(reference_or_audio.shape)}"
        )
    if method in ("contextguard", "mean_audio"):
        return select_tokens(video, _reference(reference_or_audio), rho_sem, rho_spa)
    if method == "high":
        scores = semantic_scores(video, _reference(reference_or_audio))
        return Selection.from_indices(
            num_tokens, select_high_similarity(scores, rho_sem), select_spatial(video, rho_spa), scores
        )
    if method == "random":
        if generator is None:
            raise ValueError("method 'random' needs a torch.Generator (seeded, for reproducible runs)")
        if match_keep is None:
            match_keep = select_tokens(video, _reference(reference_or_audio), rho_sem, rho_spa).num_kept
        chosen = select_random(num_tokens, match_keep, generator).to(video.device)
        return Selection.from_indices(num_tokens, chosen, chosen[:0])
    raise ValueError(f"unknown pruning method {method!r}; expected one of {sorted(METHODS)}")
