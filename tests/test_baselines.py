"""Baseline selections and the `select_for_method` registry."""

from typing import get_args

import pytest
import torch

from streamguard.config import PruningSettings
from streamguard.pruning.baselines import (
    METHODS,
    select_for_method,
    select_full,
    select_high_similarity,
    select_random,
)
from streamguard.pruning.select import select_tokens

# Tokens (1,0) (0,1) / (1,0) (-1,0) on a 2×2 grid; spatial variation picks (1,1) = 3 (see test_select).
VIDEO = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]]])


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_matches_the_configurable_methods() -> None:
    assert frozenset(get_args(PruningSettings.model_fields["method"].annotation)) == METHODS


def test_select_full() -> None:
    assert select_full(5).tolist() == [0, 1, 2, 3, 4]


def test_select_random_is_exact_sorted_unique_and_seeded() -> None:
    first = select_random(100, 37, _generator(3))
    assert first.numel() == 37 and first.unique().numel() == 37
    assert torch.equal(first, torch.sort(first).values)
    assert torch.equal(first, select_random(100, 37, _generator(3)))
    assert not torch.equal(first, select_random(100, 37, _generator(4)))
    assert select_random(10, 0, _generator()).tolist() == []
    assert select_random(10, 10, _generator()).tolist() == list(range(10))
    with pytest.raises(ValueError, match="keep 11 of 10"):
        select_random(10, 11, _generator())


def test_select_high_similarity_keeps_the_highest_fraction() -> None:
    assert select_high_similarity(torch.tensor([0.9, 0.1, 0.5, 0.3]), 0.5).tolist() == [0, 2]
    assert select_high_similarity(torch.tensor([0.5, 0.5, 0.5, 0.1]), 0.5).tolist() == [
        0,
        1,
    ]  # ties: lower index


def test_none_keeps_everything() -> None:
    selection = select_for_method("none", VIDEO, torch.tensor([1.0, 0.0]), 0.5, 0.25)
    assert selection.indices.tolist() == [0, 1, 2, 3] and selection.keep_ratio == 1.0
    assert not selection.spatial.any()


def test_contextguard_and_high_use_opposite_ends_with_the_same_spatial_branch() -> None:
    reference = torch.tensor([1.0, 0.0])  # scores 1, 0, 1, -1
    low = select_for_method("contextguard", VIDEO, reference, 0.5, 0.25)
    assert low.indices.tolist() == [1, 3]
    high = select_for_method("high", VIDEO, reference, 0.5, 0.25)
    assert high.semantic.nonzero().flatten().tolist() == [0, 2]
    assert high.spatial.nonzero().flatten().tolist() == [3]
    assert high.indices.tolist() == [0, 2, 3]


def test_mean_audio_forces_the_mean_audio_reference() -> None:
    audio = torch.tensor([[-2.0, 1.0], [0.0, -1.0]])  # mean (-1, 0): scores -1, 0, -1, 1
    selection = select_for_method("mean_audio", VIDEO, audio, 0.5, 0.25)
    assert selection.semantic.nonzero().flatten().tolist() == [0, 2]
    assert selection.indices.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match=r"\(L, d\) audio"):
        select_for_method("mean_audio", VIDEO, torch.tensor([-1.0, 0.0]), 0.5, 0.25)


def test_random_matches_the_contextguard_count() -> None:
    video = torch.randn(2, 4, 4, 8, generator=_generator(1))
    reference = torch.randn(8, generator=_generator(2))
    expected = select_tokens(video, reference, 0.5, 0.25).num_kept  # 16 semantic ∪ 4 locations × 2 frames
    matched = select_for_method("random", video, reference, 0.5, 0.25, _generator(), None)
    assert matched.num_kept == expected and 16 <= expected <= 24
    assert matched.scores is None and not matched.spatial.any()
    fixed = select_for_method("random", video, reference, 0.5, 0.25, _generator(), match_keep=5)
    assert fixed.num_kept == 5
    with pytest.raises(ValueError, match="Generator"):
        select_for_method("random", video, reference, 0.5, 0.25)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown pruning method 'fastv'"):
        select_for_method("fastv", VIDEO, torch.tensor([1.0, 0.0]), 0.5, 0.25)  # type: ignore[arg-type]
