"""Temporal redundancy: the online drop rule (App. D.1) and offline depth-score merging (§2.3, App. B.3).

Chunks are indexed from 0 here. `sims[t]` pairs chunk t with chunk t-1 (s_t of Eq. 6), so
`sims[0]` has no predecessor and is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import get_args

import torch
import torch.nn.functional as F

from streamguard.config import DropPolicy
from streamguard.pruning.select import Selection, select_semantic, select_spatial, semantic_scores

DROP_POLICIES: tuple[DropPolicy, ...] = get_args(DropPolicy)


@dataclass(frozen=True)
class DropDecision:
    """What to do with the chunk just seen: drop its video, or evict the predecessor's video span.

    `compared_with` is the index of the chunk it was compared with; `similarity` is that cosine.
    Both are None when no comparison happened.
    """

    drop_current: bool
    evict_previous: bool
    similarity: float | None
    compared_with: int | None


class OnlineDropRule:
    """Causal drop of near-duplicate chunk video by mean-embedding cosine (strictly > tau).

    - "previous": the paper's App. D.1 wording — compare with the immediate predecessor and discard
      the PREVIOUS chunk's video when they match (the session evicts it from the cache);
    - "current": compare with the last chunk whose video was KEPT and drop the NEW chunk's video when
      they match, so a slow pan accumulates change until a chunk is kept;
    - "off": never drop.
    The first chunk, and the first after `reset`, is never dropped, nor one decided with `keep`.
    Audio is never touched by this rule.
    """

    def __init__(self, tau: float = 0.99, policy: DropPolicy = "current") -> None:
        if policy not in DROP_POLICIES:
            raise ValueError(f"drop policy must be one of {DROP_POLICIES}, got {policy!r}")
        self.tau = tau
        self.policy = policy
        self._reference: torch.Tensor | None = None
        self._reference_chunk: int | None = None

    @property
    def reference_chunk(self) -> int | None:
        """Index of the chunk the next one is compared with (None before the first, or after `reset`)."""
        return self._reference_chunk

    def reset(self) -> None:
        """Forget the reference: the next chunk is kept and compared with nothing."""
        self._reference, self._reference_chunk = None, None

    def decide(self, mean_video: torch.Tensor, chunk: int, keep: bool = False) -> DropDecision:
        """Decide for chunk number `chunk`, given its mean video embedding (d,). `keep`: the
        chunk is known to differ (the pixel pre-filter saw something enter), whatever the cosine."""
        if self.policy == "off":
            return DropDecision(False, False, None, None)
        current = mean_video.detach().float()
        if self._reference is None:
            self._reference, self._reference_chunk = current, chunk
            return DropDecision(False, False, None, None)
        similarity = float(F.cosine_similarity(current, self._reference.to(current.device), dim=0))
        compared_with = self._reference_chunk
        redundant = similarity > self.tau and not keep
        keep_current_as_reference = self.policy == "previous" or not redundant
        if keep_current_as_reference:
            self._reference, self._reference_chunk = current, chunk
        return DropDecision(
            drop_current=redundant and self.policy == "current",
            evict_previous=redundant and self.policy == "previous",
            similarity=similarity,
            compared_with=compared_with,
        )


def adjacent_similarities(means: torch.Tensor) -> torch.Tensor:
    """(T, d) chunk means -> (T,) float32: s[t] = cos(mean_t, mean_{t-1}) for t ≥ 1, s[0] = NaN."""
    means = means.float()
    sims = torch.full((means.shape[0],), torch.nan, device=means.device)
    sims[1:] = F.cosine_similarity(means[1:], means[:-1], dim=-1)
    return sims


def depth_scores(sims: torch.Tensor) -> torch.Tensor:
    """Eq. 6 depth d_t = max_{i<t} s_i + max_{i>t} s_i − 2 s_t, (T,) -> (T,) float32.

    Only the real similarities s_1..s_{T-1} enter the maxima (sims[0] is ignored). Both maxima
    exist for t ∈ {2, …, T−2} (0-based chunks), the set App. B.3 names: it excludes the first
    and last adjacent-chunk similarities, whose depth — like every other t — is zero. With the
    paper's 1-based chunks and s_t = sim(chunk t, chunk t−1) the same pairs are t ∈ {3, …, T−1}.
    """
    depth = torch.zeros(sims.shape[0], device=sims.device)
    s = sims[1:].float()  # s[k] = similarity of chunks k and k+1, i.e. chunk t = k+1
    if s.numel() < 3:
        return depth
    left = torch.cummax(s, dim=0).values[:-2]  # max s[0..k-1] for k = 1..n-2
    right = torch.cummax(s.flip(0), dim=0).values.flip(0)[2:]  # max s[k+1..n-1]
    depth[2:-1] = left + right - 2 * s[1:-1]
    return depth


def segment_boundaries(
    video_means: torch.Tensor, audio_means: torch.Tensor, threshold: float = 0.5
) -> list[tuple[int, int]]:
    """Split T chunks into half-open segments [start, end) at depth-score valleys.

    A chunk t with d^v_t > threshold or d^a_t > threshold (union over modalities) is a boundary: the
    similarity to its predecessor is a valley, so a new segment starts at t.
    """
    if video_means.shape[0] != audio_means.shape[0]:
        raise ValueError(f"{video_means.shape[0]} video means but {audio_means.shape[0]} audio means")
    total = video_means.shape[0]
    if total == 0:
        return []
    is_boundary = (depth_scores(adjacent_similarities(video_means)) > threshold) | (
        depth_scores(adjacent_similarities(audio_means)) > threshold
    )
    edges = [0, *torch.nonzero(is_boundary).flatten().tolist(), total]
    return list(pairwise(edges))


@dataclass(frozen=True)
class MergedGroup:
    """Consecutive chunks of one segment represented by one set of merged video tokens.

    The merged tokens take the positions of the group's FIRST chunk; the later chunks contribute
    their video only through the average, and every chunk keeps all its audio.
    """

    chunks: tuple[int, ...]
    segment: int
    indices: torch.Tensor  # (K,) the segment's shared kept flat indices
    video: torch.Tensor  # (K, d) mean over the group's chunks of the tokens at `indices`


@dataclass(frozen=True)
class OfflinePlan:
    """Offline ContextGuard for a whole video: segments, their shared selections, merged groups."""

    segments: list[tuple[int, int]]  # half-open [start, end) chunk ranges
    selections: list[Selection]  # one shared selection per segment (scores are the segment mean)
    groups: list[MergedGroup]
    tokens_per_chunk: int

    @property
    def tokens_kept(self) -> int:
        return sum(int(group.indices.numel()) for group in self.groups)

    @property
    def keep_ratio(self) -> float:
        total = self.tokens_per_chunk * sum(end - start for start, end in self.segments)
        return self.tokens_kept / total if total else 1.0


def offline_contextguard(
    videos: Sequence[torch.Tensor],
    audios: Sequence[torch.Tensor],
    references: Sequence[torch.Tensor],
    rho_sem: float,
    rho_spa: float,
    tau_merge: float = 0.98,
    depth_threshold: float = 0.5,
) -> OfflinePlan:
    """ContextGuard over a whole video (§2.3): segment, share one index set per segment, merge.

    Per segment the semantic scores u_t are averaged over its chunks and the first chunk's spatial
    set is reused; within a segment one greedy pass groups consecutive chunks while each successive
    pair has visual similarity s^v_t > tau_merge, restarting at a pair that fails (App. B.3).
    """
    if not len(videos) == len(audios) == len(references):
        raise ValueError(f"got {len(videos)} videos, {len(audios)} audios, {len(references)} references")
    if not videos:
        return OfflinePlan([], [], [], 0)
    shapes = {tuple(video.shape) for video in videos}
    if len(shapes) != 1:
        raise ValueError(f"all chunks of a video must share one (F, H, W, d) shape, got {sorted(shapes)}")
    flat = torch.stack([video.reshape(-1, video.shape[-1]) for video in videos])  # (T, M, d)
    video_means = flat.float().mean(dim=1)
    audio_means = torch.stack([audio.float().mean(dim=0) for audio in audios])
    segments = segment_boundaries(video_means, audio_means, depth_threshold)
    visual_sims = adjacent_similarities(video_means).tolist()
    scores = torch.stack([semantic_scores(v, r) for v, r in zip(videos, references, strict=True)])
    selections: list[Selection] = []
    groups: list[MergedGroup] = []
    for k, (start, end) in enumerate(segments):
        mean_scores = scores[start:end].mean(dim=0)
        selection = Selection.from_indices(
            flat.shape[1],
            select_semantic(mean_scores, rho_sem),
            select_spatial(videos[start], rho_spa),
            mean_scores,
        )
        selections.append(selection)
        group_start = start
        for t in range(start + 1, end + 1):
            if t < end and visual_sims[t] > tau_merge:
                continue
            merged = flat[group_start:t, selection.indices].float().mean(dim=0).to(flat.dtype)
            groups.append(MergedGroup(tuple(range(group_start, t)), k, selection.indices, merged))
            group_start = t
    return OfflinePlan(segments, selections, groups, flat.shape[1])
