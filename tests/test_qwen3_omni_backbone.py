"""Qwen3-Omni on the tiny real thinker: streaming appends against transformers' own oracle.

The oracle is transformers' own: `Qwen3OmniMoeProcessor` (load_audio_from_video) lays out the
whole clip's token ids, the thinker's `get_rope_index(use_audio_in_video=True)` its positions,
`get_video_features` its video tokens and deepstack features, and the thinker's own forward (or,
with tokens pruned, one forward of its language model over the kept tokens with their deepstack
features) gives the logits a streamed session must match within 1e-4 in fp32.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cpu_helpers import one_torch_thread
from parity_helpers import (
    QUESTION,
    SYSTEM,
    official_inputs,
    official_positions,
    offline_logits,
    put_one_video_token_off,
    stream_layout,
)
from service_helpers import TOKEN, receive_until, serve_process, wait_until

import streamguard.engine.session as session_module
from streamguard.backbones import BackboneError, load_backbone
from streamguard.backbones.qwen3_omni import Qwen3OmniBackbone
from streamguard.cli import main
from streamguard.config import SessionSettings, load_settings
from streamguard.engine.session import StreamSession
from streamguard.ingest.synthetic import write_clip

TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def folder(qwen3_checkpoint):
    return qwen3_checkpoint


def load(path: str, **chunk):
    settings = load_settings("tiny-qwen3-omni", model={"path": path}, chunk=chunk)
    return load_backbone(settings.model, settings.chunk)


@pytest.fixture(scope="module")
def backbone(folder) -> Qwen3OmniBackbone:
    return load(str(folder))


@pytest.fixture(scope="module")
def clip(backbone):
    rng = np.random.default_rng(7)
    frames = [[rng.integers(0, 256, (84, 112, 3), dtype=np.uint8) for _ in range(4)] for _ in range(3)]
    audio = [(rng.standard_normal(32000) * 0.1).astype(np.float32) for _ in range(3)]
    encoded = [backbone.encode(backbone.preprocess(f, a)) for f, a in zip(frames, audio, strict=True)]
    return encoded, official_inputs(backbone, frames, audio)


def stream(backbone, encoded, keeps=None, drops=None, settings=None):
    session = StreamSession(backbone, settings or SessionSettings(), SYSTEM)
    keeps = keeps or [None] * len(encoded)
    drops = drops or [False] * len(encoded)
    for chunk, keep, drop in zip(encoded, keeps, drops, strict=True):
        session.append_chunk(chunk, keep=keep, drop_video=drop)
    return session


def random_keeps(encoded, seed: int):
    generator = torch.Generator().manual_seed(seed)
    keeps = []
    for chunk in encoded:
        n = chunk.num_video_tokens
        count = int(torch.randint(1, n, (1,), generator=generator))
        keeps.append(torch.randperm(n, generator=generator)[:count].sort().values)
    return keeps


def largest_difference(session, offline) -> float:
    streaming = session.question_logits(QUESTION)
    return (streaming - offline[-streaming.shape[0] :]).abs().max().item()


# -- layout ----------------------------------------------------------------------------------


def test_qwen3_parity_token_ids_and_positions_equal_the_official_processor(backbone, clip):
    """Prefix, each chunk's video groups and audio in the backbone's order, and the question,
    token for token and position for position as the processor and get_rope_index lay the clip."""
    encoded, inputs = clip
    ids, positions = stream_layout(backbone, encoded)
    assert ids == inputs["input_ids"][0].tolist()
    assert torch.equal(positions.float(), official_positions(backbone, inputs)[:, 0])
    # the interleaving itself: group, 13 audio tokens, group, 13 audio tokens
    video_rank, audio_rank = backbone.chunk_order(encoded[0])
    per_group = encoded[0].video.shape[1] * encoded[0].video.shape[2]
    assert audio_rank[:13].tolist() == list(range(per_group, per_group + 13))
    assert video_rank[per_group:].tolist() == list(range(per_group + 13, 2 * per_group + 13))


def test_qwen3_parity_chunk_encoder_equals_the_thinkers_own_video_features(backbone, clip):
    """Each chunk's video tokens and deepstack features are the whole clip's, cut at the chunk."""
    encoded, inputs = clip
    with torch.inference_mode():
        out = backbone.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    assert len(out.deepstack_features) == encoded[0].deepstack.shape[0] == 2
    video = torch.cat([chunk.video_flat for chunk in encoded])
    assert (video - out.pooler_output[0]).abs().max().item() <= TOLERANCE
    for layer, features in enumerate(out.deepstack_features):
        streamed = torch.cat([chunk.deepstack_flat[layer] for chunk in encoded])
        assert (streamed - features[0]).abs().max().item() <= TOLERANCE


# -- logits ----------------------------------------------------------------------------------


def test_qwen3_parity_unpruned_stream_equals_the_thinkers_own_forward(backbone, clip):
    """The thinker's own forward over the processor's output — its video tower, deepstack
    injection and get_rope_index — with the chunks' audio tokens in the audio slots."""
    encoded, inputs = clip
    thinker = backbone.model
    ids = inputs["input_ids"]
    embeds = thinker.get_input_embeddings()(ids).detach().clone()
    embeds[0, ids[0] == thinker.config.audio_token_id] = torch.cat([chunk.audio for chunk in encoded])
    with torch.inference_mode():
        offline = thinker(
            input_ids=ids,
            inputs_embeds=embeds,
            pixel_values_videos=inputs["pixel_values_videos"],
            video_grid_thw=inputs["video_grid_thw"],
            attention_mask=inputs["attention_mask"],
            feature_attention_mask=inputs["feature_attention_mask"],
            video_second_per_grid=inputs["video_second_per_grid"],
            use_audio_in_video=True,
        ).logits[0]
    assert largest_difference(stream(backbone, encoded), offline) <= TOLERANCE


@pytest.mark.parametrize("seed", [0, 1])
def test_qwen3_parity_pruned_stream_equals_one_offline_forward(backbone, clip, seed):
    encoded, inputs = clip
    keeps = random_keeps(encoded, seed)
    drops = [i == seed for i in range(len(encoded))]
    offline = offline_logits(backbone, inputs, encoded, keeps, drops)
    assert largest_difference(stream(backbone, encoded, keeps, drops), offline) <= TOLERANCE


def test_qwen3_parity_previous_policy_eviction(backbone, clip):
    encoded, inputs = clip
    session = StreamSession(backbone, SessionSettings(), SYSTEM)
    session.append_chunk(encoded[0])
    last = session.append_chunk(encoded[1])
    session.evict_video(last, encoded[1])
    session.append_chunk(encoded[2])
    offline = offline_logits(backbone, inputs, encoded, [None] * 3, [False, True, False])
    assert largest_difference(session, offline) <= TOLERANCE


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_qwen3_parity_breaks_when_one_position_is_off(backbone, clip, monkeypatch, axis):
    """The check is sharp: one video token one step off on any one axis shows up."""
    encoded, inputs = clip
    put_one_video_token_off(monkeypatch, backbone, axis)
    session = stream(backbone, encoded)
    monkeypatch.undo()
    offline = offline_logits(backbone, inputs, encoded, [None] * 3, [False] * 3)
    assert largest_difference(session, offline) > TOLERANCE


@pytest.mark.parametrize("fault", ["unpruned_index", "no_deepstack"])
def test_qwen3_parity_breaks_when_deepstack_is_not_pruned_with_the_tokens(backbone, clip, monkeypatch, fault):
    """Deepstack features that are not the kept tokens' own — one pruned token's left in place of
    a kept one's, or none at all — break parity."""
    encoded, inputs = clip
    keeps = random_keeps(encoded, 0)
    original = session_module._kept_deepstack

    def faulty(chunk, keep, order):
        if fault == "no_deepstack":
            return None
        pruned = sorted(set(range(chunk.num_video_tokens)) - set(keep.tolist()))
        wrong = keep.clone()
        wrong[-1] = pruned[-1]  # the last kept token gets a pruned token's deepstack features
        return original(chunk, wrong, order)

    monkeypatch.setattr(session_module, "_kept_deepstack", faulty)
    session = stream(backbone, encoded, keeps)
    monkeypatch.undo()
    offline = offline_logits(backbone, inputs, encoded, keeps, [False] * 3)
    assert largest_difference(session, offline) > TOLERANCE
    assert largest_difference(stream(backbone, encoded, keeps), offline) <= TOLERANCE


def test_qwen3_parity_rebased_cache_answers_as_before(backbone, clip):
    """rotate_cache on the interleaved mRoPE: a cache shifted down by any delta answers as the
    unshifted one (rotary attention sees only differences)."""
    encoded, _ = clip
    plain = stream(backbone, encoded)
    rebased = stream(backbone, encoded)
    rebased.rebase(2 * backbone.chunk_period() + 5)
    difference = rebased.question_logits(QUESTION) - plain.question_logits(QUESTION)
    assert difference.abs().max().item() <= TOLERANCE


def test_qwen3_kv_cache_holds_attention_keys_and_values_only(backbone, clip):
    """KV accounting of the mixture-of-experts decoder: per token, each layer's keys and values
    of its key-value heads at the config's head_dim (wider than hidden / heads, as released);
    the experts hold no cache."""
    encoded, _ = clip
    session = stream(backbone, encoded)
    text = backbone.model.config.text_config
    assert text.head_dim != text.hidden_size // text.num_attention_heads
    per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * text.head_dim * 4  # fp32
    assert session.cache_bytes == session.cache_tokens * per_token
    assert session.cache_tokens == len(session.layout.prefix) + sum(
        chunk.num_video_tokens + chunk.audio.shape[0] for chunk in encoded
    )


# -- loading ---------------------------------------------------------------------------------


def test_qwen3_chunks_must_be_whole_groups_and_whole_audio_windows(folder):
    with pytest.raises(BackboneError, match=r"chunk\.seconds"):
        load(str(folder), seconds=1.5, fps=2.0)
    with pytest.raises(BackboneError, match="whole groups"):
        load(str(folder), seconds=2.0, fps=1.5)


def test_qwen3_checkpoint_without_vision_start_token_id_is_refused(folder, tmp_path):
    import json
    import shutil

    broken = tmp_path / "no-vision-start"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["vision_start_token_id"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match="vision_start_token_id"):
        load(str(broken))


def test_qwen3_backbone_refuses_a_qwen25_checkpoint_naming_the_setting(checkpoint):
    with pytest.raises(BackboneError, match=r"set model\.backbone to qwen2\.5-omni"):
        load(str(checkpoint))


# -- end to end ------------------------------------------------------------------------------


def test_qwen3_train_a2v_then_replay_with_its_predictor(folder, backbone, tmp_path, capsys):
    """train-a2v sizes the predictor from the thinker; replay scores the token grid against it."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "moving.mp4", 4, motion="moving")
    write_clip(videos / "pan.mp4", 4, motion="pan")
    predictor = tmp_path / "a2v"
    train = ["train-a2v", str(videos), "--config", "tiny-qwen3-omni", "--model", str(folder), "--out"]
    small = ["--epochs", "1", "--batch-size", "2", "--val-fraction", "0.5", "--layers", "1", "--heads", "2"]
    assert main([*train, str(predictor), *small, "--queries", "2"]) == 0
    assert json.loads((predictor / "a2v_config.json").read_text())["config"]["dim"] == backbone.hidden_size

    clip = write_clip(tmp_path / "clip.mp4", 6, width=320, height=240, motion="moving")
    report = tmp_path / "replay.json"
    replay = ["replay", str(clip), "--config", "tiny-qwen3-omni", "--model", str(folder)]
    assert main([*replay, "--predictor", str(predictor), "-q", "What moves?", "--json", str(report)]) == 0
    assert "A: " in capsys.readouterr().out
    chunks = json.loads(report.read_text())["chunks"]
    assert [c["index"] for c in chunks] == [0, 1, 2]
    # 320×240 frames resize to 192×128: 6×4 tokens of 32 px, 2 groups, and 26 audio tokens a chunk
    assert all(c["grid"] == [2, 4, 6] and c["resized_hw"] == [128, 192] for c in chunks)
    assert all(c["audio_tokens"] == 26 and c["reference_mode"] == "a2v" for c in chunks)
    assert 0 < chunks[0]["video_tokens_kept"] < chunks[0]["video_tokens_in"] == 48


def test_qwen3_eval_answers_through_the_streaming_path(folder, tmp_path):
    write_clip(tmp_path / "clip.mp4", 4, motion="moving")
    question = {"id": "q", "video": "clip.mp4", "question": "What moves?", "options": ["squares", "nothing"]}
    dataset = tmp_path / "questions.jsonl"
    dataset.write_text(json.dumps({**question, "answer": "A"}) + "\n")
    out = tmp_path / "out"
    evaluate = [
        "eval",
        str(dataset),
        "--config",
        "tiny-qwen3-omni",
        "--model",
        str(folder),
        "--out",
        str(out),
    ]
    assert main([*evaluate, "--methods", "contextguard,full", "--max-new-tokens", "2"]) == 0
    methods = json.loads((out / "summary.json").read_text())["methods"]
    assert set(methods) == {"contextguard", "full"}
    assert all(m["scored"] == 1 and m["errors"] == 0 for m in methods.values())


def test_qwen3_serve_streams_a_file_and_answers_over_the_websocket(folder, tmp_path):
    env = {
        "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN]),
        "STREAMGUARD_SERVICE__ALLOW_FILE_SOURCES": "true",
        "STREAMGUARD_SERVICE__FILE_ROOT": str(tmp_path),
    }
    with serve_process(tmp_path, ["--config", "tiny-qwen3-omni", "--model", str(folder)], env) as serving:
        service = serving.service
        clip = write_clip(tmp_path / "clip.mp4", seconds=4)
        created = service.http.post("/v1/streams", json={"source": "file", "path": str(clip)})
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        wait_until(
            lambda: service.http.get(f"/v1/streams/{stream_id}").json()["stats"]["chunks_processed"] >= 2,
            "both chunks through the Qwen3-Omni thinker",
        )
        with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
            ws.send(json.dumps({"type": "question.ask", "id": "q1", "text": "What moves?", "max_tokens": 4}))
            done = receive_until(ws, lambda event: event["type"] in ("answer.done", "error"))[-1]
        assert done["type"] == "answer.done", done
        assert done["stats"]["context_tokens"] > 2 * 26
    assert serving.process.returncode == 0, serving.output()
