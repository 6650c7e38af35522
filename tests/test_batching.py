"""Batching across streams on the tiny real models: one encoder call for several streams' chunks
equals each chunk encoded alone, and answers decoded in one ragged forward across streams (each
row against its own cache) are token for token the answers each stream decodes alone through
transformers' own forward."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
import torch
from cpu_helpers import one_torch_thread
from service_helpers import random_chunks, tiny_settings
from transformers import AttentionInterface, PretrainedConfig

from streamguard.backbones import load_backbone
from streamguard.backbones.packed_attention import PACKED_SDPA, packed_sdpa_attention
from streamguard.backbones.ragged import RaggedRow
from streamguard.backbones.tiny import build_tiny_salmonn_checkpoint
from streamguard.backbones.tiny_qwen3 import build_tiny_qwen3_checkpoint
from streamguard.config import load_settings
from streamguard.engine import kv
from streamguard.engine.pipeline import create_pipeline, encode_chunks, prepare_chunk
from streamguard.engine.scheduler import Scheduler
from streamguard.engine.session import SamplingParams, StreamSession

QUESTIONS = ("What is happening?", "Describe the scene in detail, please.", "Who speaks?")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def settings(checkpoint):
    return tiny_settings(checkpoint, session={"max_new_tokens": 24})


@pytest.fixture(scope="module")
def backbone(settings):
    return load_backbone(settings.model, settings.chunk)


BUILDERS = {
    "video-salmonn2+": ("tiny-video-salmonn", build_tiny_salmonn_checkpoint),
    "qwen3-omni": ("tiny-qwen3-omni", build_tiny_qwen3_checkpoint),
}
MODELS = ["qwen2.5-omni", *BUILDERS]


@pytest.fixture(scope="module")
def models(settings, backbone, tmp_path_factory):
    """`models(name)`: (settings, backbone) of a tiny real model, built on first use."""
    built = {"qwen2.5-omni": (settings, backbone)}

    def get(name: str):
        if name not in built:
            config, build = BUILDERS[name]
            folder = build(tmp_path_factory.mktemp(name.replace("+", "plus")))
            other = load_settings(config, model={"path": str(folder)}, session={"max_new_tokens": 24})
            built[name] = (other, load_backbone(other.model, other.chunk))
        return built[name]

    return get


def mixed_chunks():
    """Chunks of three streams at different frame sizes (different grids), one without video."""
    chunks = [
        random_chunks(1, seed=1)[0],
        random_chunks(1, seed=2, height=112, width=140)[0],
        random_chunks(1, seed=3, height=56, width=84)[0],
    ]
    chunks[2].frames = []
    return chunks


@pytest.mark.parametrize("model", MODELS)
def test_one_encoder_call_for_several_streams_equals_each_chunk_alone(models, model):
    _, backbone = models(model)
    prepared = [prepare_chunk(backbone, chunk) for chunk in mixed_chunks()]
    together = encode_chunks(backbone, prepared)
    for item, batched in zip(prepared, together, strict=True):
        alone = encode_chunks(backbone, [item])[0].encoded
        assert (batched.encoded.video is None) == (alone.video is None) == (item.chunk.frames == [])
        if alone.video is not None:
            assert batched.encoded.video.shape == alone.video.shape
            torch.testing.assert_close(batched.encoded.video, alone.video, rtol=0, atol=1e-5)
        assert batched.encoded.audio.shape == alone.audio.shape
        torch.testing.assert_close(batched.encoded.audio, alone.audio, rtol=0, atol=1e-5)
        assert (batched.encoded.deepstack is None) == (alone.deepstack is None)
        if alone.deepstack is not None:  # Qwen3-Omni's deepstack features, split per item too
            torch.testing.assert_close(batched.encoded.deepstack, alone.deepstack, rtol=0, atol=1e-5)


def streams_of_different_lengths(backbone, settings) -> list[StreamSession]:
    """Three streams whose caches hold 1, 3 and 2 chunks."""
    sessions = []
    for count, seed in zip((1, 3, 2), (10, 20, 30), strict=True):
        pipeline = create_pipeline(backbone, settings)
        for chunk in random_chunks(count, seed=seed):
            pipeline.process(chunk)
        sessions.append(pipeline.session)
    return sessions


def decode_together(sessions, questions, params, starts) -> list[list[int]]:
    """Decode every answer in one ragged forward per step; stream i joins at step `starts[i]`,
    so prompts are prefilled in the same forward as other streams' next tokens."""
    decoders = [None] * len(sessions)
    step = 0
    while step == 0 or any(d is None or not d.finished for d in decoders):
        for i, start in enumerate(starts):
            if start == step:
                decoders[i] = sessions[i].start_answer(questions[i], params)
        live = [d for d in decoders if d is not None and not d.finished]
        rows = [RaggedRow(*d.next_input(), d.session.cache) for d in live]
        for decoder, logits in zip(live, sessions[0].backbone.forward_batch(rows), strict=True):
            decoder.accept(logits)
        step += 1
    for decoder in decoders:
        decoder.close()
    return [d.generated for d in decoders]


def decode_alone(session, question, params) -> list[int]:
    """What `StreamSession.ask` does, keeping the token ids: transformers' forward, one stream."""
    decoder = session.start_answer(question, params)
    while not decoder.finished:
        embeds, positions = decoder.next_input()
        decoder.accept(session.backbone.forward(embeds, positions, session.cache)[-1])
    decoder.close()
    return decoder.generated


@pytest.mark.parametrize("model", MODELS)
def test_greedy_answers_decoded_across_streams_are_the_answers_decoded_alone(models, model):
    settings, backbone = models(model)
    sessions = streams_of_different_lengths(backbone, settings)
    params = SamplingParams(max_new_tokens=24)
    before = [kv.snapshot(s.cache) for s in sessions]
    alone = [decode_alone(s, q, params) for s, q in zip(sessions, QUESTIONS, strict=True)]
    together = decode_together(sessions, QUESTIONS, params, starts=(0, 2, 5))
    assert [len(tokens) for tokens in alone] != [0, 0, 0]
    assert together == alone
    for session, snapshot in zip(sessions, before, strict=True):  # every cache cut back exactly
        for (keys, values), layer in zip(snapshot, session.cache.layers, strict=True):
            assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)


async def test_the_scheduler_decodes_answers_of_several_streams_as_each_alone(backbone, settings):
    pipelines = {name: create_pipeline(backbone, settings) for name in "abc"}
    for (name, pipeline), count in zip(pipelines.items(), (1, 3, 2), strict=True):
        for chunk in random_chunks(count, seed=ord(name)):
            pipeline.process(chunk)
    params = SamplingParams(max_new_tokens=settings.session.max_new_tokens)
    alone = [p.session.answer(q, params) for p, q in zip(pipelines.values(), QUESTIONS, strict=True)]
    scheduler = Scheduler(max_pending_chunks=4, engine=settings.engine)
    for name, pipeline in pipelines.items():
        scheduler.register(name, pipeline, _NoChunks())
    scheduler.start()
    try:
        answers = [scheduler.ask(name, q) for name, q in zip(pipelines, QUESTIONS, strict=True)]
        texts = await asyncio.gather(*(_text(a) for a in answers))
    finally:
        await scheduler.stop()
    assert texts == alone


class _NoChunks:
    def chunk_processed(self, outcome) -> None:
        raise AssertionError("no chunk was submitted")

    chunk_failed = chunk_shed = chunk_processed


async def _text(answer) -> str:
    return "".join([delta async for delta in answer])


def test_a_ragged_batch_refuses_two_rows_on_one_cache(backbone, settings):
    session = create_pipeline(backbone, settings).session
    decoder = session.start_answer(QUESTIONS[0], SamplingParams(max_new_tokens=2))
    row = RaggedRow(*decoder.next_input(), session.cache)
    with pytest.raises(ValueError, match="cache of its own"):
        backbone.forward_batch([row, row])
    decoder.close()


async def test_the_prefilter_still_spares_the_vision_encoder_in_a_batched_round(backbone, settings):
    still = random_chunks(1, seed=5)[0]
    chunks = [dataclasses.replace(still, index=i, start=2.0 * i) for i in range(4)]
    reports: list = []
    listener = _NoChunks()
    listener.chunk_processed = lambda outcome: reports.append(outcome.report)  # type: ignore[method-assign]
    scheduler = Scheduler(max_pending_chunks=8, engine=settings.engine)
    scheduler.register("still", create_pipeline(backbone, settings), listener)
    scheduler.start()
    try:
        for chunk in chunks:
            scheduler.submit_chunk("still", chunk)
        for _ in range(3000):  # bounded: a minute
            if len(reports) == len(chunks):
                break
            await asyncio.sleep(0.02)
    finally:
        await scheduler.stop()
    assert not reports[0].encoder_skipped  # the first chunk is the reference
    skipped = [r for r in reports[1:] if r.encoder_skipped]
    assert skipped and all(r.prefilter == "unchanged" and r.video_tokens_kept == 0 for r in skipped)


@contextlib.contextmanager
def towers_looping(backbone):
    """The towers on transformers' sdpa loop (one call per window, frame or audio chunk), the
    oracle for the packed attention they load with; the language model is left alone."""
    configs = [backbone.model.config.vision_config, getattr(backbone.model.config, "audio_config", None)]
    towers = [c for c in configs if isinstance(c, PretrainedConfig)]  # video-SALMONN's audio: a dict
    assert all(c._attn_implementation == PACKED_SDPA for c in towers) and towers
    for config in towers:
        config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        for config in towers:
            config._attn_implementation = PACKED_SDPA


@pytest.fixture
def packed_calls(monkeypatch):
    """How many times the packed attention ran (so a parity check cannot compare the loop to itself)."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return packed_sdpa_attention(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, PACKED_SDPA, counted)
    return calls


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("streams", [1, 3])
def test_packed_tower_attention_equals_transformers_loop(models, model, streams, packed_calls):
    """One stream's chunk, and three streams' chunks of different grids in one call (windows of
    unequal length: the 112×140 and 56×84 frames cut partial windows): vision and audio tower
    outputs with one attention call a layer equal the loop's."""
    _, backbone = models(model)
    chunks = mixed_chunks()[:streams] if streams > 1 else random_chunks(1, seed=4, height=112, width=140)
    batch = [prepare_chunk(backbone, chunk).inputs for chunk in chunks]
    packed_vision, packed_audio = backbone.encode_visions(batch), backbone.encode_audios(batch)
    assert packed_calls
    with towers_looping(backbone):
        looped_vision, looped_audio = backbone.encode_visions(batch), backbone.encode_audios(batch)
    pairs = [
        *((p[0], q[0]) for p, q in zip(packed_vision, looped_vision, strict=True)),  # video tokens
        *((p[1], q[1]) for p, q in zip(packed_vision, looped_vision, strict=True)),  # Qwen3 deepstack
        *zip(packed_audio, looped_audio, strict=True),
    ]
    for packed, looped in pairs:
        assert (packed is None) == (looped is None)
        if packed is not None:
            torch.testing.assert_close(packed, looped, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["qwen2.5-omni", "qwen3-omni"])
def test_packed_audio_attention_over_chunks_of_unequal_length_equals_the_loop(models, model, packed_calls):
    """Log-mels of 3.5 s and 2.3 s in one audio-tower call: each is cut into the tower's chunks,
    its last one shorter, so the segments differ in length within and across items."""
    _, backbone = models(model)
    lengths = torch.tensor([350, 230])
    features = torch.randn(
        2, backbone.model.config.audio_config.num_mel_bins, 350, generator=torch.Generator().manual_seed(5)
    )
    mask = (torch.arange(350) < lengths.unsqueeze(1)).long()

    def tower():
        return backbone.model.model.get_audio_features(
            features, feature_attention_mask=mask
        ).last_hidden_state

    packed = tower()
    assert packed_calls
    with towers_looping(backbone):
        looped = tower()
    torch.testing.assert_close(packed, looped, rtol=0, atol=1e-5)
