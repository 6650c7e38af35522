"""Per-chunk ContextGuard selection on tiny hand-made tensors (answers worked out in comments)."""

import math

import pytest
import torch

from streamguard.pruning.select import (
    Selection,
    select_semantic,
    select_spatial,
    select_tokens,
    semantic_keep_count,
    semantic_scores,
    spatial_cells,
    spatial_variation,
)


def _map(values: list[list[float]], frames: int = 1) -> torch.Tensor:
    """(frames, H, W, 1) video whose every frame is the given H×W scalar map."""
    grid = torch.tensor(values, dtype=torch.float32)[..., None]
    return grid.expand(frames, *grid.shape).clone()


def test_semantic_scores_are_cosines_in_flat_order() -> None:
    video = torch.tensor([[[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]]])  # (1, 1, 3, 2)
    scores = semantic_scores(video, torch.tensor([5.0, 0.0]))
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0, 1 / math.sqrt(2)]))


def test_semantic_scores_run_in_float32_for_half_inputs() -> None:
    video = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.bfloat16)
    scores = semantic_scores(video, torch.tensor([1.0, 0.0], dtype=torch.bfloat16))
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize(
    ("num_tokens", "rho", "expected"),
    [
        (10, 0.5, 5),
        (5, 0.5, 3),  # 2.5 rounds half up
        (10, 0.14, 1),  # 1.4 rounds down
        (10, 0.16, 2),  # 1.6 rounds up
        (25, 0.58, 15),  # 0.58·25 is 14.4999… in floats, still the half that rounds up
        (9, 0.05, 0),  # 0.45 -> nothing
        (7, 0.0, 0),
        (7, 1.0, 7),
    ],
)
def test_semantic_keep_count_rounds_half_up(num_tokens: int, rho: float, expected: int) -> None:
    assert semantic_keep_count(num_tokens, rho) == expected


@pytest.mark.parametrize("rho", [-0.1, 1.5])
def test_ratios_outside_unit_interval_are_rejected(rho: float) -> None:
    with pytest.raises(ValueError, match="rho_sem"):
        semantic_keep_count(4, rho)
    with pytest.raises(ValueError, match="rho_spa"):
        select_spatial(torch.zeros(1, 2, 2, 1), rho)


def test_select_semantic_keeps_the_lowest_similarities_sorted() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3])
    assert select_semantic(scores, 0.5).tolist() == [1, 3]  # 0.1 and 0.3
    assert select_semantic(scores, 0.75).tolist() == [1, 2, 3]
    assert select_semantic(scores, 0.0).tolist() == []
    assert select_semantic(scores, 1.0).tolist() == [0, 1, 2, 3]


def test_select_semantic_breaks_ties_by_lower_index() -> None:
    scores = torch.tensor([0.2, 0.1, 0.1, 0.1])
    assert select_semantic(scores, 0.5).tolist() == [1, 2]
    assert select_semantic(torch.zeros(6), 0.5).tolist() == [0, 1, 2]


def test_spatial_variation_sums_distances_to_existing_neighbours() -> None:
    grid = torch.tensor([[0.0, 1.0], [3.0, 7.0]])[..., None]
    # (0,0): |1-0| + |3-0| = 4; (0,1): |0-1| + |7-1| = 7; (1,0): |3-0| + |7-3| = 7; (1,1): 6 + 4 = 10
    torch.testing.assert_close(spatial_variation(grid), torch.tensor([[4.0, 7.0], [7.0, 10.0]]))
    # L2 over the feature axis; the ends of a 1×3 row have one neighbour only: 5 | 5 + 4 | 4
    row = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]]])
    torch.testing.assert_close(spatial_variation(row), torch.tensor([[5.0, 9.0, 4.0]]))


def test_spatial_cells_on_4x4_with_g2_are_four_2x2_blocks() -> None:
    cells = spatial_cells(4, 4, 0.25)  # N = 4, g = 2, strides 2, 2
    assert cells is not None
    assert cells.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_spatial_cells_on_5x7_add_partial_border_cells() -> None:
    cells = spatial_cells(5, 7, 0.2)  # N = 7, g = 2, ΔH = 2, ΔW = 3: row bands {0,1},{2,3},{4}
    assert cells is not None
    assert cells.tolist() == [
        [0, 0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 1, 2],
        [3, 3, 3, 4, 4, 4, 5],
        [3, 3, 3, 4, 4, 4, 5],
        [6, 6, 6, 7, 7, 7, 8],
    ]


def test_spatial_cells_clamp_strides_on_elongated_maps() -> None:
    cells = spatial_cells(2, 10, 1.0)  # N = 20, g = 4: ⌊2/4⌋ = 0 becomes 1, ΔW = 2
    assert cells is not None
    assert cells.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [5, 5, 6, 6, 7, 7, 8, 8, 9, 9]]


def test_select_spatial_on_4x4_averages_frames_and_repeats_locations() -> None:
    # Frame 0 has a 2 at (1,1), frame 1 a 2 at (0,3): the average has both spikes at 1.
    video = torch.zeros(2, 4, 4, 1)
    video[0, 1, 1] = 2.0
    video[1, 0, 3] = 2.0
    # Variation of the average: (1,1) = 4, its neighbours 1 each; corner (0,3) = 2, (0,2), (1,3) = 1.
    # Cells: top-left -> (1,1)=5, top-right -> (0,3)=3, bottom-left -> (2,1)=9,
    # bottom-right is all zero -> lowest index (2,2)=10. Frame 1 adds 16.
    assert select_spatial(video, 0.25).tolist() == [3, 5, 9, 10, 19, 21, 25, 26]


def test_select_spatial_on_5x7_with_partial_cells_and_ties() -> None:
    flat = _map([[0.0] * 7 for _ in range(5)])
    # All ties: each of the 9 cells gives its top-left token h*7 + w.
    assert select_spatial(flat, 0.2).tolist() == [0, 3, 6, 14, 17, 20, 28, 31, 34]
    spiked = flat.clone()
    spiked[0, 3, 5] = 1.0
    # (3,5) = 26 wins its cell; its neighbour (3,6) = 27 wins the right-edge cell and (4,5) = 33 the
    # bottom cell; (2,5) and (3,4) sit in the spike's own cell.
    assert select_spatial(spiked, 0.2).tolist() == [0, 3, 6, 14, 26, 27, 28, 33, 34]


def test_select_spatial_at_the_extremes() -> None:
    video = torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(0))
    assert select_spatial(video, 1.0).tolist() == list(range(32))  # g = 4, strides 1: every token
    assert select_spatial(video, 0.0).tolist() == []
    assert select_spatial(video, 0.05).tolist() == []  # N = ⌊0.8⌋ = 0 < 1
    one = select_spatial(video, 0.1)  # N = 1, g = 1: a single cell, one location per frame
    assert one.numel() == 2 and one[1] - one[0] == 16


def _union_video() -> torch.Tensor:
    # Tokens (1,0) (0,1) / (1,0) (-1,0) on a 2×2 grid; spatial variation √2, 2√2, 2, 2+√2 -> (1,1) = 3.
    return torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]]])


def test_select_tokens_union_deduplicates_overlap() -> None:
    selection = select_tokens(_union_video(), torch.tensor([1.0, 0.0]), 0.5, 0.25)
    # scores 1, 0, 1, -1: semantic keeps {3, 1}; spatial {3} is already in it.
    assert selection.indices.tolist() == [1, 3]
    assert selection.semantic.tolist() == [False, True, False, True]
    assert selection.spatial.tolist() == [False, False, False, True]
    torch.testing.assert_close(selection.scores, torch.tensor([1.0, 0.0, 1.0, -1.0]))
    assert selection.num_tokens == 4 and selection.num_kept == 2 and selection.keep_ratio == 0.5


def test_select_tokens_union_adds_spatial_tokens_in_order() -> None:
    selection = select_tokens(_union_video(), torch.tensor([-1.0, 0.0]), 0.5, 0.25)
    # scores -1, 0, -1, 1: semantic keeps {0, 2}; spatial adds 3.
    assert selection.indices.tolist() == [0, 2, 3]
    assert selection.indices.dtype == torch.long
    assert selection.keep_ratio == 0.75


def test_selection_from_indices_collapses_duplicates() -> None:
    selection = Selection.from_indices(6, torch.tensor([4, 1]), torch.tensor([1, 5, 4]))
    assert selection.indices.tolist() == [1, 4, 5]
    assert selection.scores is None
    assert (
        Selection.from_indices(
            0, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        ).keep_ratio
        == 1.0
    )
