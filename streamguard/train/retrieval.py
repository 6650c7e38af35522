"""Audio-to-video retrieval (paper App. A.2): R@1, R@5 and median rank.

Each query (an audio-side vector) has one matching candidate (the visual embedding of the same
video); every candidate is ranked by cosine similarity to the query. As in App. A.2 retrieval is
per video: a video's audio side is the mean of its chunks' vectors (the predictor's ĥ, or the
mean audio embedding for the "orig" reference), its visual side the mean of its chunks' mean
video tokens.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RetrievalMetrics:
    r1: float  # % of queries whose match ranks first
    r5: float  # % of queries whose match ranks in the top 5
    medr: float  # median rank of the match (1 is best)
    candidates: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def retrieval_ranks(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """1-based rank of candidate i for query i, (N, d) × (N, d) -> (N,). A tie with the match
    counts against it (the rank is 1 + the candidates scoring at least as high, match excluded),
    so a predictor that maps everything to one vector cannot score well."""
    if queries.shape != candidates.shape or queries.dim() != 2:
        raise ValueError(
            f"queries and candidates must both be (N, d), got {tuple(queries.shape)}, {tuple(candidates.shape)}"
        )
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
    matched = sims.diagonal().unsqueeze(1)
    return (sims >= matched).sum(dim=1)


def retrieval_metrics(queries: torch.Tensor, candidates: torch.Tensor) -> RetrievalMetrics:
    ranks = retrieval_ranks(queries, candidates)
    return RetrievalMetrics(
        r1=100.0 * float((ranks <= 1).float().mean()),
        r5=100.0 * float((ranks <= 5).float().mean()),
        medr=float(statistics.median(ranks.tolist())),
        candidates=int(ranks.numel()),
    )


def pool_by_video(per_chunk: torch.Tensor, video_ids: torch.Tensor) -> torch.Tensor:
    """(N, d) chunk vectors and (N,) video ids 0..V-1 -> (V, d) per-video means."""
    count = int(video_ids.max()) + 1
    sums = torch.zeros(count, per_chunk.shape[-1], dtype=torch.float32, device=per_chunk.device)
    sums.index_add_(0, video_ids.to(per_chunk.device), per_chunk.float())
    sizes = torch.bincount(video_ids.to(per_chunk.device), minlength=count).clamp(min=1)
    return sums / sizes.unsqueeze(1)
