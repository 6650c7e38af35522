"""The online drop rule's two policies and ContextGuard selection, end to end through ChunkPipeline
and StreamSession on the tiny real model: the cache holds exactly what the policy says, and the
question logits still equal one offline forward of the thinker over the kept sequence.

The clip is A, B, B, B, C: chunks 2 and 3 repeat chunk 1's frames exactly (a camera on a still
scene), each with its own sound; A, B and C are unrelated pictures (cosine of their mean video
embeddings well under τ = 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_helpers import QUESTION, official_inputs, offline_logits

from streamguard.config import load_settings
from streamguard.engine.pipeline import ChunkReport, create_pipeline
from streamguard.ingest.chunker import AVChunk
from streamguard.pruning.a2v import mean_audio_reference
from streamguard.pruning.select import select_semantic, select_spatial, semantic_scores

PICTURES = [0, 1, 1, 1, 2]  # which picture each chunk shows
REDUNDANT = [False, False, True, True, False]
AUDIO_TOKENS = 50  # 2 s of audio at 25 tokens per second


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(11)
    pictures = [[rng.integers(0, 256, (84, 112, 3), dtype=np.uint8) for _ in range(4)] for _ in range(3)]
    frames = [[frame.copy() for frame in pictures[p]] for p in PICTURES]
    audio = [(rng.standard_normal(32000) * 0.1).astype(np.float32) for _ in PICTURES]
    return frames, audio


@pytest.fixture(scope="module")
def encoded(backbone, clip):
    frames, audio = clip
    return [backbone.encode(backbone.preprocess(f, a)) for f, a in zip(frames, audio, strict=True)]


@pytest.fixture(scope="module")
def oracle_inputs(backbone, clip):
    return official_inputs(backbone, *clip)


def run_pipeline(backbone, checkpoint, clip, prefilter: bool = False, **pruning):
    """The clip through a fresh pipeline; the pixel pre-filter off unless asked for, so the drop
    rule sees every chunk."""
    pruning = {"prefilter": {"enabled": prefilter}, **pruning}
    settings = load_settings("tiny", model={"path": str(checkpoint)}, pruning=pruning)
    pipeline = create_pipeline(backbone, settings)
    frames, audio = clip
    reports = [
        pipeline.process(AVChunk(index=i, start=2.0 * i, frames=f, audio=a))
        for i, (f, a) in enumerate(zip(frames, audio, strict=True))
    ]
    return pipeline.session, reports


def expected_selection(chunk, rho_sem: float, rho_spa: float) -> tuple[list[int], list[int], torch.Tensor]:
    """The paper's two branches computed directly: semantic (lowest cosine with the mean audio,
    the reference without a predictor) and spatial; the kept set is their union."""
    semantic = select_semantic(semantic_scores(chunk.video, mean_audio_reference(chunk.audio)), rho_sem)
    spatial = select_spatial(chunk.video, rho_spa)
    union = torch.unique(torch.cat([semantic, spatial]))  # sorted
    return semantic.tolist(), spatial.tolist(), union


def assert_cache_layout(session, expected_video_tokens: list[int]) -> None:
    """The cache is the prefix, then each chunk's kept video and its audio, back to back."""
    start = session.prefix_length
    for cached, video_tokens in zip(session.chunks, expected_video_tokens, strict=True):
        assert (cached.start, cached.video_tokens, cached.audio_tokens) == (start, video_tokens, AUDIO_TOKENS)
        start += cached.length
    assert session.cache_tokens == start
    assert session.stats.video_tokens_kept == sum(expected_video_tokens)


def assert_parity(backbone, session, oracle_inputs, encoded, keeps, drops) -> None:
    streaming = session.question_logits(QUESTION)
    offline = offline_logits(backbone, oracle_inputs, encoded, keeps, drops)
    assert (streaming - offline[-streaming.shape[0] :]).abs().max().item() <= 1e-4


def kept_indices(report: ChunkReport) -> torch.Tensor:
    return torch.tensor(sorted(set(report.semantic) | set(report.spatial)), dtype=torch.long)


def test_the_clip_has_exactly_two_redundant_chunks(encoded):
    means = torch.stack([chunk.video_flat.mean(dim=0) for chunk in encoded])
    sims = torch.nn.functional.cosine_similarity(means[1:], means[:-1], dim=-1)
    assert [bool(s > 0.99) for s in sims] == REDUNDANT[1:]


def test_policy_current_leaves_the_redundant_chunks_video_out_and_keeps_their_audio(
    backbone, checkpoint, clip, encoded, oracle_inputs
):
    session, reports = run_pipeline(backbone, checkpoint, clip, drop_policy="current")
    assert [r.video_dropped for r in reports] == REDUNDANT
    assert not any(r.previous_video_evicted for r in reports)
    # each redundant chunk was compared with chunk 1, the last one whose video was kept
    assert reports[2].similarity == pytest.approx(1.0, abs=1e-5)
    assert reports[3].similarity == pytest.approx(1.0, abs=1e-5)
    assert reports[4].similarity < 0.99
    keeps = [kept_indices(r) for r in reports]
    assert_cache_layout(
        session, [0 if drop else len(keep) for keep, drop in zip(keeps, REDUNDANT, strict=True)]
    )
    assert [r.video_tokens_kept for r in reports] == [c.video_tokens for c in session.chunks]
    assert_parity(backbone, session, oracle_inputs, encoded, keeps, REDUNDANT)


def test_the_prefilter_skips_the_encoder_on_the_repeated_chunks_and_the_cache_is_the_same(
    backbone, checkpoint, clip, encoded, oracle_inputs
):
    """Chunks 2 and 3 repeat chunk 1's pixels: the pre-filter leaves their video unencoded and
    the cache is exactly the one the drop rule alone builds (parity with the offline forward)."""
    session, reports = run_pipeline(backbone, checkpoint, clip, prefilter=True, drop_policy="current")
    assert [r.encoder_skipped for r in reports] == REDUNDANT
    assert [r.video_dropped for r in reports] == REDUNDANT
    assert [r.prefilter == "unchanged" for r in reports] == REDUNDANT
    assert all("vision_encode" not in r.timings_ms for r in reports if r.encoder_skipped)
    assert all(r.similarity is None and r.video_tokens_in == reports[1].video_tokens_in for r in reports[2:4])
    keeps = [kept_indices(r) for r in reports]
    assert_cache_layout(
        session, [0 if drop else len(keep) for keep, drop in zip(keeps, REDUNDANT, strict=True)]
    )
    assert session.stats.video_tokens_in == sum(r.video_tokens_in for r in reports)
    assert_parity(backbone, session, oracle_inputs, encoded, keeps, REDUNDANT)


def test_policy_previous_evicts_each_predecessors_video_span(
    backbone, checkpoint, clip, encoded, oracle_inputs
):
    session, reports = run_pipeline(backbone, checkpoint, clip, drop_policy="previous")
    assert [r.previous_video_evicted for r in reports] == REDUNDANT
    assert not any(r.video_dropped for r in reports)
    # chunk 2 evicted chunk 1's video, chunk 3 then evicted chunk 2's: chunk 3 holds the picture
    evicted = [False, True, True, False, False]
    keeps = [kept_indices(r) for r in reports]
    assert_cache_layout(
        session, [0 if gone else len(keep) for keep, gone in zip(keeps, evicted, strict=True)]
    )
    assert session.stats.video_spans_evicted == 2
    assert_parity(backbone, session, oracle_inputs, encoded, keeps, evicted)


def test_policy_off_keeps_every_chunks_video(backbone, checkpoint, clip, encoded, oracle_inputs):
    session, reports = run_pipeline(backbone, checkpoint, clip, drop_policy="off")
    assert not any(r.video_dropped or r.previous_video_evicted for r in reports)
    keeps = [kept_indices(r) for r in reports]
    assert_cache_layout(session, [len(keep) for keep in keeps])
    assert_parity(backbone, session, oracle_inputs, encoded, keeps, [False] * len(keeps))


@pytest.mark.parametrize(("rho_sem", "rho_spa"), [(0.5, 0.1), (0.25, 0.5)])
def test_contextguard_keeps_the_union_of_its_two_branches_with_parity(
    backbone, checkpoint, clip, encoded, oracle_inputs, rho_sem, rho_spa
):
    session, reports = run_pipeline(
        backbone, checkpoint, clip, drop_policy="off", rho_sem=rho_sem, rho_spa=rho_spa
    )
    keeps = []
    for report, chunk in zip(reports, encoded, strict=True):
        semantic, spatial, union = expected_selection(chunk, rho_sem, rho_spa)
        assert (report.semantic, report.spatial) == (semantic, spatial)
        assert report.reference_mode == "mean_audio"
        assert report.video_tokens_in == chunk.num_video_tokens
        assert report.video_tokens_kept == len(union) < chunk.num_video_tokens
        keeps.append(union)
    # the spatial branch adds tokens the semantic branch left out
    assert any(len(union) > len(r.semantic) for union, r in zip(keeps, reports, strict=True))
    assert_cache_layout(session, [len(keep) for keep in keeps])
    assert_parity(backbone, session, oracle_inputs, encoded, keeps, [False] * len(keeps))


@pytest.mark.parametrize("prefilter", [False, True])
def test_policy_current_keeps_video_again_when_the_budget_evicts_the_chunk_it_compares_with(
    backbone, checkpoint, clip, prefilter
):
    """A camera on one still scene for 8 chunks, a budget that holds three: under `current` every
    chunk after the first repeats it, but when the kept chunk is about to leave the cache the next
    chunk keeps its video, so the cache never holds the stream's audio alone. With the pixel
    pre-filter the repeats skip the encoder, and it lets go of its reference at the same chunks."""
    frames, audio = clip
    settings = load_settings(
        "tiny",
        model={"path": str(checkpoint)},
        pruning={"drop_policy": "current", "prefilter": {"enabled": prefilter}},
        session={"token_budget": 200},  # 3 chunks of 50 audio tokens and one chunk's kept video
    )
    pipeline = create_pipeline(backbone, settings)
    held_video = []
    for i in range(8):
        report = pipeline.process(
            AVChunk(index=i, start=2.0 * i, frames=frames[1], audio=audio[i % len(audio)])
        )
        assert report.video_dropped == (report.video_tokens_kept == 0)
        assert report.encoder_skipped == (prefilter and report.video_dropped)
        held_video.append(sum(chunk.video_tokens for chunk in pipeline.session.chunks))
    session = pipeline.session
    assert session.stats.chunks_evicted > 0
    assert all(held > 0 for held in held_video)
    # video is kept once every time the previous reference leaves: chunks 0, 3 and 6
    assert [c.index for c in session.chunks if c.video_tokens] == [6]
    assert session.stats.video_tokens_kept == 3 * held_video[0]


def test_full_tokens_compute_no_semantic_reference(backbone, checkpoint, clip, caplog):
    """Method "none" scores nothing: no predictor call, no fallback warning, reference "none"."""
    with caplog.at_level("WARNING", logger="streamguard.pruning"):
        _, reports = run_pipeline(backbone, checkpoint, clip, method="none")
    assert {r.reference_mode for r in reports} == {"none"}
    assert all(r.video_tokens_kept == r.video_tokens_in for r in reports)
    assert not [r for r in caplog.records if r.name == "streamguard.pruning"]
