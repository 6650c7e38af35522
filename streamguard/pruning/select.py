"""Per-chunk ContextGuard token selection (paper §2.2, App. B.2): semantic ∪ spatial.

Shapes: one chunk's video features are (F, H, W, d) and the flat token index is
j = f*H*W + h*W + w, the backbone's order. Every function returns sorted 1-D long tensors of flat
indices on the input's device.

Counts:
- semantic branch keeps K = ⌊ρ_sem·M + ½⌋ tokens (round half up, so ρ_sem = 0.5 keeps exactly half
  of an even M and the larger half of an odd one);
- spatial branch targets N = ⌊ρ_spa·H·W⌋ locations per frame, exactly as App. B.2 writes it.
A 1e-9 slack absorbs float error such as 0.29·100 = 28.999… before the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_FLOAT_SLACK = 1e-9


def _check_ratio(name: str, rho: float) -> None:
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {rho}")


def _floor_count(x: float) -> int:
    return math.floor(x + _FLOAT_SLACK)


def semantic_keep_count(num_tokens: int, rho_sem: float) -> int:
    """How many tokens the semantic branch keeps out of `num_tokens`: round half up of ρ·M."""
    _check_ratio("rho_sem", rho_sem)
    return min(num_tokens, _floor_count(rho_sem * num_tokens + 0.5))


def semantic_scores(video: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine of every video token with the reference vector (Eq. 4): (F, H, W, d), (d,) -> (F*H*W,).

    Computed in float32 so bf16/fp16 features rank the same way on every device.
    """
    tokens = video.reshape(-1, video.shape[-1]).float()
    return F.cosine_similarity(tokens, reference.to(tokens).unsqueeze(0), dim=-1)


def select_semantic(scores: torch.Tensor, rho_sem: float) -> torch.Tensor:
    """Flat indices of the `semantic_keep_count` tokens with the LOWEST scores.

    The sort is stable, so equal scores are taken in order of their index (lower index first).
    """
    keep = semantic_keep_count(scores.numel(), rho_sem)
    order = torch.sort(scores, stable=True).indices
    return torch.sort(order[:keep]).values


def spatial_variation(grid: torch.Tensor) -> torch.Tensor:
    """(H, W, d) -> (H, W): sum of L2 distances to the up/down/left/right neighbours that exist.

    Border tokens simply have fewer terms (no padding or wrap-around), so a corner sums two
    distances and an edge token three.
    """
    grid = grid.float()
    score = torch.zeros(grid.shape[:2], dtype=grid.dtype, device=grid.device)
    vertical = torch.linalg.vector_norm(grid[1:] - grid[:-1], dim=-1)  # (H-1, W): between rows h, h+1
    horizontal = torch.linalg.vector_norm(grid[:, 1:] - grid[:, :-1], dim=-1)  # (H, W-1)
    score[1:] += vertical
    score[:-1] += vertical
    score[:, 1:] += horizontal
    score[:, :-1] += horizontal
    return score


def spatial_cells(
    height: int, width: int, rho_spa: float, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """(H, W) long map of grid-cell ids, or None when the branch selects nothing (N < 1).

    App. B.2: N = ⌊ρ·H·W⌋, g = ⌊√N⌋, strides ΔH = ⌊H/g⌋, ΔW = ⌊W/g⌋; cells start every ΔH rows and
    ΔW columns, so a map not divisible by g gets extra partial cells at its bottom/right border.
    A stride is at least 1: on elongated maps (g > H) ⌊H/g⌋ would be 0 and every row is its own cell.
    """
    _check_ratio("rho_spa", rho_spa)
    g = math.isqrt(_floor_count(rho_spa * height * width))
    if g < 1:
        return None
    stride_h, stride_w = max(1, height // g), max(1, width // g)
    cells_per_row = -(-width // stride_w)
    row_band = torch.arange(height, device=device).div(stride_h, rounding_mode="floor")
    col_band = torch.arange(width, device=device).div(stride_w, rounding_mode="floor")
    return row_band[:, None] * cells_per_row + col_band[None, :]


def select_spatial(video: torch.Tensor, rho_spa: float) -> torch.Tensor:
    """Grid-wise spatial detail tokens (App. B.2), the chosen (h, w) repeated on every frame.

    Per cell the token with the largest `spatial_variation` of the frame-averaged map wins; ties go
    to the lowest flat index.
    """
    frames, height, width, _ = video.shape
    device = video.device
    cells = spatial_cells(height, width, rho_spa, device)
    if cells is None:
        return torch.empty(0, dtype=torch.long, device=device)
    cells = cells.flatten()
    score = spatial_variation(video.float().mean(dim=0)).flatten()
    num_cells = int(cells.max()) + 1
    best = torch.full((num_cells,), -math.inf, dtype=score.dtype, device=device).scatter_reduce(
        0, cells, score, reduce="amax"
    )
    # Non-winners get a sentinel past the end, so the per-cell minimum is the lowest winning index.
    sentinel = height * width
    position = torch.arange(sentinel, device=device)
    candidates = torch.where(score == best[cells], position, sentinel)
    chosen = torch.full((num_cells,), sentinel, dtype=torch.long, device=device).scatter_reduce(
        0, cells, candidates, reduce="amin"
    )
    chosen = torch.sort(chosen).values
    offsets = torch.arange(frames, device=device) * sentinel  # frame f starts at f*H*W
    return (offsets[:, None] + chosen[None, :]).flatten()


@dataclass(frozen=True)
class Selection:
    """One chunk's kept video tokens and where they came from.

    `semantic` marks the tokens kept by the method's main rule (the low-similarity branch for
    ContextGuard; every kept token for the full and random baselines), `spatial` those kept by
    the spatial branch; `indices` is always the sorted union. `scores` holds the tokens' cosine to
    the reference when the method computed one.
    """

    indices: torch.Tensor  # (K,) long, sorted
    semantic: torch.Tensor  # (M,) bool
    spatial: torch.Tensor  # (M,) bool
    scores: torch.Tensor | None  # (M,) float32
    num_tokens: int

    @classmethod
    def from_indices(
        cls,
        num_tokens: int,
        semantic: torch.Tensor,
        spatial: torch.Tensor,
        scores: torch.Tensor | None = None,
    ) -> Selection:
        """Build the union of two index sets (duplicates collapse, order is ascending)."""
        sem_mask = torch.zeros(num_tokens, dtype=torch.bool, device=semantic.device)
        spa_mask = torch.zeros_like(sem_mask)
        sem_mask[semantic] = True
        spa_mask[spatial.to(semantic.device)] = True
        indices = torch.nonzero(sem_mask | spa_mask).flatten()
        return cls(indices, sem_mask, spa_mask, scores, num_tokens)

    @property
    def num_kept(self) -> int:
        return int(self.indices.numel())

    @property
    def keep_ratio(self) -> float:
        """Kept / total video tokens; 1.0 for a chunk without video tokens."""
        return self.num_kept / self.num_tokens if self.num_tokens else 1.0


def select_tokens(video: torch.Tensor, reference: torch.Tensor, rho_sem: float, rho_spa: float) -> Selection:
    """ContextGuard for one chunk (Eq. 5): low-similarity semantic tokens ∪ spatial detail tokens."""
    scores = semantic_scores(video, reference)
    return Selection.from_indices(
        scores.numel(), select_semantic(scores, rho_sem), select_spatial(video, rho_spa), scores
    )
