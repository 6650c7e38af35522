"""Online drop rule and offline depth-score segmentation/merging on hand-made sequences."""

import math

import pytest
import torch

from streamguard.pruning.temporal import (
    DropDecision,
    OnlineDropRule,
    adjacent_similarities,
    depth_scores,
    offline_contextguard,
    segment_boundaries,
)


def _at(degrees: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


# A slow pan: 5° per chunk (cos 5° ≈ 0.9962 > 0.99), 10° apart only every other chunk (cos ≈ 0.9848).
DRIFT = [_at(5.0 * k) for k in range(5)]


def test_previous_policy_evicts_every_predecessor_of_a_slow_drift() -> None:
    rule = OnlineDropRule(0.99, "previous")
    decisions = [rule.decide(v, chunk) for chunk, v in enumerate(DRIFT)]
    assert decisions[0] == DropDecision(False, False, None, None)
    for chunk, decision in enumerate(decisions[1:], start=1):
        assert decision.evict_previous and not decision.drop_current
        assert decision.compared_with == chunk - 1
        assert decision.similarity == pytest.approx(math.cos(math.radians(5.0)), abs=1e-6)


def test_current_policy_keeps_a_chunk_once_the_drift_accumulates() -> None:
    rule = OnlineDropRule(0.99, "current")
    decisions = [rule.decide(v, chunk) for chunk, v in enumerate(DRIFT)]
    assert [d.drop_current for d in decisions] == [False, True, False, True, False]
    assert not any(d.evict_previous for d in decisions)
    # Compared with the last KEPT chunk: 0, 0, then 2, 2.
    assert [d.compared_with for d in decisions] == [None, 0, 0, 2, 2]
    assert decisions[2].similarity == pytest.approx(math.cos(math.radians(10.0)), abs=1e-6)


@pytest.mark.parametrize("policy", ["current", "previous"])
def test_reset_makes_the_next_chunk_a_fresh_start(policy: str) -> None:
    rule = OnlineDropRule(0.99, policy)  # type: ignore[arg-type]
    rule.decide(DRIFT[0], 0)
    assert rule.decide(DRIFT[0], 1).similarity == pytest.approx(1.0)
    rule.reset()
    assert rule.reference_chunk is None
    assert rule.decide(DRIFT[0], 2) == DropDecision(False, False, None, None)
    assert rule.reference_chunk == 2


def test_off_policy_never_drops() -> None:
    rule = OnlineDropRule(0.5, "off")
    assert all(
        rule.decide(v, chunk) == DropDecision(False, False, None, None) for chunk, v in enumerate(DRIFT)
    )


@pytest.mark.parametrize("policy", ["current", "previous"])
def test_threshold_is_strict(policy: str) -> None:
    rule = OnlineDropRule(1.0, policy)  # type: ignore[arg-type]
    rule.decide(torch.tensor([3.0, 4.0]), 0)
    decision = rule.decide(torch.tensor([3.0, 4.0]), 1)  # cosine exactly 1.0, not > 1.0
    assert decision.similarity == 1.0
    assert not decision.drop_current and not decision.evict_previous


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="drop policy"):
        OnlineDropRule(0.99, "newest")  # type: ignore[arg-type]


def test_adjacent_similarities() -> None:
    sims = adjacent_similarities(torch.stack([_at(0), _at(0), _at(90), _at(270)]))
    assert math.isnan(sims[0].item())
    torch.testing.assert_close(sims[1:], torch.tensor([1.0, 0.0, -1.0]), atol=1e-6, rtol=0)


def test_depth_scores_on_a_hand_sequence() -> None:
    # s_1..s_5 = 0.9, 0.95, 0.2, 0.9, 0.8; depth only for t = 2, 3, 4 (0-based):
    # t=2: 0.9 + 0.9 - 1.9 = -0.1; t=3: 0.95 + 0.9 - 0.4 = 1.45; t=4: 0.95 + 0.8 - 1.8 = -0.05.
    # sims[0] is ignored even when it would dominate the left maximum.
    sims = torch.tensor([10.0, 0.9, 0.95, 0.2, 0.9, 0.8])
    torch.testing.assert_close(depth_scores(sims), torch.tensor([0.0, 0.0, -0.1, 1.45, -0.05, 0.0]))


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_depth_scores_are_zero_without_two_defined_maxima(length: int) -> None:
    assert depth_scores(torch.full((length,), 0.3)).tolist() == [0.0] * length


def _means(degrees: list[float]) -> torch.Tensor:
    return torch.stack([_at(a) for a in degrees])


def test_segment_boundaries_take_the_union_of_both_modalities() -> None:
    video = _means([0, 0, 0, 90, 90, 90])  # s = 1, 1, 0, 1, 1: depth 2 at t=3
    audio = _means([0, 0, 90, 90, 90, 90])  # s = 1, 0, 1, 1, 1: depth 2 at t=2
    assert segment_boundaries(video, video) == [(0, 3), (3, 6)]
    assert segment_boundaries(audio, audio) == [(0, 2), (2, 6)]
    assert segment_boundaries(video, audio) == [(0, 2), (2, 3), (3, 6)]
    assert segment_boundaries(video, audio, threshold=2.5) == [(0, 6)]


def test_first_and_last_similarities_never_make_boundaries() -> None:
    early = _means([0, 90, 90, 90, 90, 90])  # the only valley is s_1
    late = _means([0, 0, 0, 0, 0, 90])  # the only valley is s_5
    assert segment_boundaries(early, late) == [(0, 6)]
    assert segment_boundaries(torch.empty(0, 2), torch.empty(0, 2)) == []


# Offline case: 6 chunks of 1×2×2 tokens (d = 3). Token = (scene_x, scene_y, c): the scene part is
# the chunk mean (the c of each chunk sum to 0) and, against the reference (0, 0, 1), a token's cosine
# is f(c) = c / √(1 + c²): f(1) = .707, f(2) = .894, f(3) = .949.
SCENES = [(1.0, 0.0), (1.0, 0.0), (0.9, math.sqrt(0.19)), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0)]
CONTENT = [[-2, -1, 0, 3], [3, -3, 1, -1], [1, -2, 3, -2], [3, -1, -1, -1], [3, -3, 1, -1], [3, -2, 0, -1]]
# Visual adjacent similarities: 1, 0.9, 0.436, 1, 1 -> depth at t=2: 1 + 1 - 1.8 = 0.2 (no boundary),
# t=3: 1 + 1 - 0.872 = 1.128 (boundary), t=4: 0. Audio is constant. Segments [0, 3) and [3, 6).


def _offline_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    videos = [
        torch.tensor([[x, y, float(c)] for c in content]).reshape(1, 2, 2, 3)
        for (x, y), content in zip(SCENES, CONTENT, strict=True)
    ]
    audios = [torch.ones(4, 3) for _ in videos]
    references = [torch.tensor([0.0, 0.0, 1.0]) for _ in videos]
    return videos, audios, references


def test_offline_contextguard_segments_shares_indices_and_merges() -> None:
    videos, audios, references = _offline_inputs()
    plan = offline_contextguard(videos, audios, references, rho_sem=0.5, rho_spa=0.25, tau_merge=0.98)
    assert plan.segments == [(0, 3), (3, 6)]
    # Segment 0: summed f = .762, -2.55, 1.656, -.652 -> semantic {1, 3} (chunk 0 alone would give
    # {0, 1}); spatial from chunk 0 only: variation of c = [[-2, -1], [0, 3]] is 3, 5, 5, 7 -> {3}.
    # Segment 1: summed f = 2.846, -2.55, 0, -2.121 -> {1, 3}; chunk 3's variation 8, 4, 4, 0 -> {0}.
    assert [s.indices.tolist() for s in plan.selections] == [[1, 3], [0, 1, 3]]
    assert [s.spatial.nonzero().flatten().tolist() for s in plan.selections] == [[3], [0]]
    # s_1 = 1 > 0.98 merges chunks 0 and 1; s_2 = 0.9 restarts; chunks 3..5 all merge.
    assert [g.chunks for g in plan.groups] == [(0, 1), (2,), (3, 4, 5)]
    assert [g.segment for g in plan.groups] == [0, 0, 1]
    assert [g.indices.tolist() for g in plan.groups] == [[1, 3], [1, 3], [0, 1, 3]]
    # Merged tokens average c at the shared indices: (-1 - 3)/2, (3 - 1)/2; chunk 2 alone; and
    # (3+3+3)/3, (-1-3-2)/3, (-1-1-1)/3.
    torch.testing.assert_close(plan.groups[0].video, torch.tensor([[1.0, 0.0, -2.0], [1.0, 0.0, 1.0]]))
    torch.testing.assert_close(plan.groups[1].video, videos[2].reshape(4, 3)[[1, 3]])
    torch.testing.assert_close(
        plan.groups[2].video, torch.tensor([[0.0, 1.0, 3.0], [0.0, 1.0, -2.0], [0.0, 1.0, -1.0]])
    )
    assert plan.tokens_per_chunk == 4
    assert plan.tokens_kept == 2 + 2 + 3
    assert plan.keep_ratio == pytest.approx(7 / 24)


def test_offline_contextguard_merge_restarts_inside_one_segment() -> None:
    videos, audios, references = _offline_inputs()
    plan = offline_contextguard(videos, audios, references, 0.5, 0.25, tau_merge=0.98, depth_threshold=5.0)
    assert plan.segments == [(0, 6)]
    # One shared set for all six chunks; s_3 = 0.436 still breaks the merge chain.
    assert [g.chunks for g in plan.groups] == [(0, 1), (2,), (3, 4, 5)]
    assert len({tuple(g.indices.tolist()) for g in plan.groups}) == 1


def test_offline_contextguard_validates_inputs() -> None:
    videos, audios, references = _offline_inputs()
    with pytest.raises(ValueError, match="references"):
        offline_contextguard(videos, audios, references[:-1], 0.5, 0.1)
    with pytest.raises(ValueError, match="shape"):
        offline_contextguard([videos[0], torch.zeros(1, 2, 3, 3)], audios[:2], references[:2], 0.5, 0.1)
    empty = offline_contextguard([], [], [], 0.5, 0.1)
    assert empty.groups == [] and empty.keep_ratio == 1.0
