"""video-SALMONN 2+ on the tiny real checkpoint: loading, preprocessing, its audio branch, and
streaming appends against one offline forward (the oracle).

The oracle lays the whole clip out as video-SALMONN 2+'s published code does (its
`generate_id_target`: per temporal patch, the video tokens then that patch's share of the audio
tokens) around transformers' own Qwen2.5-VL processor output, and takes positions from the
published `get_rope_index` (audio-visual branch), written out below with the real class's
`get_vision_position_ids` for the video block and checked against the real class's
`get_rope_index` wherever the two models agree. Then it drops the pruned tokens and runs one
forward of the real `Qwen2_5_VLForConditionalGeneration` decoder.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from parity_helpers import QUESTION, SYSTEM, stream_layout

from streamguard.backbones import BackboneError, load_backbone
from streamguard.backbones.base import EncodedChunk
from streamguard.backbones.salmonn import SalmonnBackbone, split_evenly
from streamguard.backbones.salmonn_audio import read_checkpoint_tensors
from streamguard.backbones.tiny import build_tiny_salmonn_checkpoint
from streamguard.config import SessionSettings, load_settings
from streamguard.engine.pipeline import create_pipeline
from streamguard.engine.session import StreamSession
from streamguard.ingest.files import iter_chunks


def settings_for(path: str, **model):
    return load_settings("tiny-video-salmonn", model={"path": path, **model})


def load(path: str, **model):
    settings = settings_for(path, **model)
    return load_backbone(settings.model, settings.chunk)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_salmonn_checkpoint(tmp_path_factory.mktemp("tiny-salmonn"))


@pytest.fixture(scope="module")
def backbone(folder) -> SalmonnBackbone:
    return load(str(folder))


def random_chunks(seed: int, count: int, height: int = 84, width: int = 112):
    rng = np.random.default_rng(seed)
    frames = [
        [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)] for _ in range(count)
    ]
    audio = [(rng.standard_normal(32000) * 0.1).astype(np.float32) for _ in range(count)]
    return frames, audio


@pytest.fixture(scope="module")
def chunks(backbone):
    frames, audio = random_chunks(7, 3)
    encoded = [backbone.encode(backbone.preprocess(f, a)) for f, a in zip(frames, audio, strict=True)]
    return frames, audio, encoded


# -- the official pieces -------------------------------------------------------------------


def official_processor(backbone):
    """transformers' Qwen2.5-VL processor over the checkpoint's own processor configs."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor.from_pretrained(backbone.model_id),
        tokenizer=backbone.tokenizer,
        video_processor=Qwen2VLVideoProcessor.from_pretrained(backbone.model_id),
    )


def official_feature_extractor():
    """As video-SALMONN 2+'s data pipeline builds it (DataArguments defaults)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30)


def video_only_inputs(backbone, frames: list[np.ndarray], question: str = QUESTION):
    """Qwen2.5-VL's own layout of the clip as a video: `<|vision_start|>` N×`<|video_pad|>`
    `<|vision_end|>`, in the published prompt `<video>\\n{question}`."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"<|vision_start|><|video_pad|><|vision_end|>\n{question}"},
    ]
    text = backbone.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return official_processor(backbone)(
        text=text,
        videos=[np.stack(frames)],
        return_tensors="pt",
        # the frames were sampled at 2 fps: the processor's seconds per temporal patch follow from it
        videos_kwargs={
            "video_metadata": [{"fps": 2.0, "total_num_frames": len(frames)}],
            **backbone._video_kwargs,
        },
    )


def interleave_audio(
    backbone, video_ids: torch.Tensor, grid_thw: torch.Tensor, audio_length: int
) -> torch.Tensor:
    """The published audio-visual layout: after each temporal patch's video tokens, its share of
    `audio_length` audio tokens (video-SALMONN 2+'s `split_into_groups`)."""
    config = backbone.model.config
    ids = video_ids.tolist()
    first = ids.index(config.video_token_id)
    grid_t, grid_h, grid_w = (int(x) for x in grid_thw)
    per_patch = grid_h * grid_w // config.vision_config.spatial_merge_size**2
    block = []
    for share in split_evenly(audio_length, grid_t):
        block += [config.video_token_id] * per_patch + [config.audio_token_id] * share
    return torch.tensor(ids[:first] + block + ids[first + grid_t * per_patch :])


def published_rope_index(
    backbone, ids: torch.Tensor, grid_thw: torch.Tensor, second_per_grid: float
) -> torch.Tensor:
    """(3, N) positions by video-SALMONN 2+'s get_rope_index (audio-visual branch, one video):
    text one by one; video token (g, h, w) at (b + ⌊2·g·s⌋, b + h, b + w); audio token k at
    (b + k, b, b + k); the text after the block from its largest temporal position plus one."""
    config = backbone.model.config
    is_video = ids == config.video_token_id
    is_audio = ids == config.audio_token_id
    base = int(is_video.nonzero()[0])
    end = int((is_video | is_audio).nonzero()[-1]) + 1
    merge = config.vision_config.spatial_merge_size
    video = backbone.model.model.get_vision_position_ids(base, grid_thw, 1, merge, 2 * second_per_grid)
    steps = torch.arange(int(is_audio.sum()))
    audio = torch.stack([base + steps, torch.full_like(steps, base), base + steps])
    block = torch.zeros(3, end - base, dtype=torch.long)
    block[:, is_video[base:end]] = video
    block[:, is_audio[base:end]] = audio
    after = int(block[0].max()) + 1 + torch.arange(ids.shape[0] - end)
    return torch.cat([torch.arange(base).expand(3, -1), block, after.expand(3, -1)], dim=1)


def official_clip(backbone, frames_per_chunk, audio_length: int):
    frames = [f for chunk in frames_per_chunk for f in chunk]
    inputs = video_only_inputs(backbone, frames)
    grid = inputs["video_grid_thw"][0]
    ids = interleave_audio(backbone, inputs["input_ids"][0], grid, audio_length)
    second_per_grid = float(inputs["second_per_grid_ts"][0])
    return inputs, ids, published_rope_index(backbone, ids, grid, second_per_grid)


def offline_logits(backbone, ids, positions, encoded: list[EncodedChunk], keeps, drops) -> torch.Tensor:
    """One forward of the real decoder over the official sequence restricted to the kept tokens."""
    model = backbone.model
    config = model.config
    embeds = model.get_input_embeddings()(ids).clone()
    video_slots = (ids == config.video_token_id).nonzero().flatten()
    audio_slots = (ids == config.audio_token_id).nonzero().flatten()
    keep_mask = torch.ones(ids.shape[0], dtype=torch.bool)
    v = a = 0
    for chunk, keep, drop in zip(encoded, keeps, drops, strict=True):
        flat = chunk.video_flat
        slots = video_slots[v : v + flat.shape[0]]
        embeds[slots] = flat
        kept = torch.zeros(flat.shape[0], dtype=torch.bool)
        if not drop:
            kept[keep if keep is not None else slice(None)] = True
        keep_mask[slots] = kept
        v += flat.shape[0]
        embeds[audio_slots[a : a + chunk.audio.shape[0]]] = chunk.audio
        a += chunk.audio.shape[0]
    assert v == video_slots.numel() and a == audio_slots.numel()
    with torch.inference_mode():
        out = model.model.language_model(
            inputs_embeds=embeds[keep_mask][None], position_ids=positions[:, None, keep_mask]
        )
        return model.lm_head(out.last_hidden_state[0])


def stream(backbone, encoded, keeps, drops, settings=None) -> StreamSession:
    session = StreamSession(backbone, settings or SessionSettings(), SYSTEM)
    for chunk, keep, drop in zip(encoded, keeps, drops, strict=True):
        session.append_chunk(chunk, keep=keep, drop_video=drop)
    return session


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# -- loading -------------------------------------------------------------------------------


def test_the_tiny_checkpoint_has_the_published_layout_and_loads_through_from_pretrained(folder, backbone):
    from safetensors import safe_open
    from transformers import Blip2QFormerModel, Qwen2_5_VLForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with safe_open(folder / "model.safetensors", framework="pt") as saved:
        names = set(saved.keys())
    for name in [
        "visual.patch_embed.proj.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "audio.conv1.weight",
        "audio.layers.1.self_attn.k_proj.weight",
        "audio.qformer.bert.embeddings.LayerNorm.weight",
        "audio.qformer.bert.encoder.layer.0.attention.self.query.weight",
        "audio.qformer.bert.encoder.layer.1.crossattention.self.key.weight",
        "audio.qformer.bert.encoder.layer.1.output_query.LayerNorm.bias",
        "audio.q_tokens",
        "audio.audio_proj.weight",
    ]:
        assert name in names, name
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert type(backbone.model) is Qwen2_5_VLForConditionalGeneration
    assert (
        type(backbone.audio.encoder) is WhisperEncoder and type(backbone.audio.qformer) is Blip2QFormerModel
    )
    assert backbone.dtype == torch.float32 and backbone.device.type == "cpu"
    audio_pad = backbone.tokenizer.convert_tokens_to_ids("<|audio_pad|>")
    assert backbone.model.config.audio_token_id == audio_pad
    published = read_checkpoint_tensors(str(folder), "audio.")
    for name, tensor in backbone.audio.published_state_dict().items():
        assert torch.equal(tensor, published[name]), name
    again = load(str(folder))
    for (name, a), (_, b) in zip(
        backbone.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tiny_video_salmonn_builds_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMGUARD_CACHE", str(tmp_path))
    first = load("tiny:video-salmonn")
    assert (tmp_path / "tiny-video-salmonn" / "streamguard-tiny.json").is_file()
    assert first.model_id == "tiny:video-salmonn"
    with pytest.raises(ValueError, match=r"known: qwen2\.5-omni, qwen3-omni, video-salmonn"):
        load("tiny:nothing")


@pytest.mark.parametrize(
    ("config", "backbone_name", "message"),
    [
        ({"model_type": "qwen2_5_omni"}, "video-salmonn2+", "set model.backbone to qwen2.5-omni"),
        (
            {"model_type": "qwen2_5_vl", "audio_config": {}},
            "qwen2.5-omni",
            "set model.backbone to video-salmonn2\\+",
        ),
        (
            {"model_type": "qwen2_5_vl"},
            "video-salmonn2+",
            "holds a 'qwen2_5_vl' model; the video-salmonn2\\+ backbone needs",
        ),
        ({"model_type": "qwen3_omni_moe"}, "qwen2.5-omni", "set model.backbone to qwen3-omni"),
    ],
    ids=["omni-as-salmonn", "salmonn-as-omni", "plain-qwen2.5-vl", "qwen3-omni-as-qwen2.5-omni"],
)
def test_a_checkpoint_of_another_family_is_refused_with_the_setting_that_loads_it(
    tmp_path, config, backbone_name, message
):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match=message):
        load(str(tmp_path), backbone=backbone_name)


def test_a_checkpoint_without_its_audio_weights_is_a_clear_error(folder, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    copy = tmp_path / "no-audio"
    shutil.copytree(folder, copy)
    with safe_open(copy / "model.safetensors", framework="pt") as saved:
        names = saved.keys()
        kept = {key: saved.get_tensor(key) for key in names if not key.startswith("audio.qformer")}
        metadata = saved.metadata()
    save_file(kept, copy / "model.safetensors", metadata=metadata)
    with pytest.raises(BackboneError, match=r"lacks \d+ of the audio branch's \d+ weights"):
        load(str(copy))


# -- preprocessing and the encoders --------------------------------------------------------


def tone(samples: int = 32000) -> np.ndarray:
    t = np.arange(samples) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("height", "width"), [(84, 112), (97, 131), (480, 640)], ids=["multiple-of-28", "odd", "large"]
)
def test_a_chunk_equals_the_official_processors(backbone, height, width):
    rng = np.random.default_rng(height)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    ours = backbone.preprocess(frames, tone())
    official = video_only_inputs(backbone, frames)
    assert torch.equal(ours.pixel_values_videos, official["pixel_values_videos"])
    assert torch.equal(ours.video_grid_thw, official["video_grid_thw"])
    assert float(official["second_per_grid_ts"][0]) == backbone.seconds_per_grid == 1.0
    features = official_feature_extractor()(tone(), sampling_rate=16000, return_tensors="pt")[
        "input_features"
    ][0]
    assert ours.input_features.shape == (128, 3000)
    assert torch.equal(ours.input_features, features)


def test_short_missing_and_long_audio_match_the_official_extractor(backbone):
    extractor = official_feature_extractor()

    def official(audio):
        return extractor(audio, sampling_rate=16000, return_tensors="pt")["input_features"][0]

    assert torch.equal(backbone.preprocess([], tone(9000)).input_features, official(tone(9000)))
    assert torch.equal(backbone.preprocess([], None).input_features, official(np.zeros(32000, np.float32)))
    assert torch.equal(backbone.preprocess([], tone(50000)).input_features, official(tone(50000)[:32000]))


def test_a_chunk_is_2_temporal_patches_and_4_audio_tokens(backbone, chunks):
    _, _, encoded = chunks
    assert encoded[0].video.shape == (2, 3, 4, backbone.hidden_size)
    assert encoded[0].audio.shape == (4, backbone.hidden_size)
    audio_only = backbone.encode(backbone.preprocess([], tone()))
    assert audio_only.video is None and audio_only.audio.shape == (4, backbone.hidden_size)


def test_the_window_qformer_computes_what_the_published_module_does(backbone):
    """The published Q-Former by hand from the checkpoint's tensors (BERT layers over the queries:
    self-attention, cross-attention into the 0.5 s window, feed-forward, each post-LayerNorm)."""
    weights = read_checkpoint_tensors(backbone.model_id, "audio.")
    tower = backbone.audio
    features = backbone.preprocess([], tone()).input_features
    with torch.inference_mode():
        hidden = tower.encoder(features[None]).last_hidden_state[0]
        ours = tower(features[None], 4)[0]
    heads = 4

    def linear(x, name):
        return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    def layer_norm(x, name):
        return torch.nn.functional.layer_norm(
            x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], 1e-12
        )

    def attention(x, memory, name):
        q, k, v = (
            linear(t, f"{name}.self.{p}") for t, p in ((x, "query"), (memory, "key"), (memory, "value"))
        )
        split = [t.reshape(t.shape[0], heads, -1).transpose(0, 1) for t in (q, k, v)]
        scores = split[0] @ split[1].transpose(1, 2) / math.sqrt(split[0].shape[-1])
        mixed = (scores.softmax(-1) @ split[2]).transpose(0, 1).reshape(x.shape)
        return layer_norm(linear(mixed, f"{name}.output.dense") + x, f"{name}.output.LayerNorm")

    expected = []
    for w in range(4):
        window = hidden[25 * w : 25 * (w + 1)]
        x = layer_norm(weights["q_tokens"][0], "qformer.bert.embeddings.LayerNorm")
        for i in range(2):
            layer = f"qformer.bert.encoder.layer.{i}"
            x = attention(x, x, f"{layer}.attention")
            x = attention(x, window, f"{layer}.crossattention")
            inner = torch.nn.functional.gelu(linear(x, f"{layer}.intermediate_query.dense"))
            x = layer_norm(
                linear(inner, f"{layer}.output_query.dense") + x, f"{layer}.output_query.LayerNorm"
            )
        expected.append(linear(x, "audio_proj"))
    assert max_difference(ours, torch.cat(expected)) <= 1e-5


def test_whole_clip_video_features_equal_the_chunks(backbone, chunks):
    """Qwen2.5-VL's vision tower attends within a temporal patch, so streaming loses nothing."""
    frames, _, encoded = chunks
    inputs = video_only_inputs(backbone, [f for chunk in frames for f in chunk])
    with torch.inference_mode():
        whole = backbone.model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"]
        ).pooler_output[0]
    assert max_difference(whole, torch.cat([e.video_flat for e in encoded])) <= 1e-5


# -- layout, positions, parity -------------------------------------------------------------


def test_a_30_second_stream_is_the_published_offline_layout_token_for_token(backbone):
    """15 chunks = one 30 s Whisper window offline: 60 audio tokens, 2 per temporal patch."""
    frames, _ = random_chunks(3, 15, height=56, width=56)
    inputs, ids, positions = official_clip(backbone, frames, audio_length=math.ceil(30 / 30) * 60)
    _, height, width = (int(x) // 2 for x in inputs["video_grid_thw"][0])
    hidden = backbone.hidden_size
    shapes = [EncodedChunk(torch.zeros(2, height, width, hidden), torch.zeros(4, hidden)) for _ in range(15)]
    stream_ids, stream_positions = stream_layout(backbone, shapes)
    assert stream_ids == ids.tolist()
    assert torch.equal(stream_positions, positions)
    # Up to its last video token the published rule is the real Qwen2.5-VL class's own.
    real, _ = backbone.model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
    )
    not_audio = ids != backbone.model.config.audio_token_id
    last_video = int((inputs["input_ids"][0] == backbone.model.config.video_token_id).nonzero()[-1]) + 1
    assert torch.equal(positions[:, not_audio][:, :last_video], real[:, 0, :last_video])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_logits_equal_one_offline_forward_with_random_pruning(backbone, chunks, seed):
    frames, _, encoded = chunks
    _, ids, positions = official_clip(backbone, frames, audio_length=4 * len(encoded))
    generator = torch.Generator().manual_seed(seed)
    keeps, drops = [], []
    for i, chunk in enumerate(encoded):
        n = chunk.num_video_tokens
        count = int(torch.randint(0, n + 1, (1,), generator=generator))
        keeps.append(torch.randperm(n, generator=generator)[:count].sort().values)
        drops.append(i == seed % len(encoded))
    streaming = stream(backbone, encoded, keeps, drops).question_logits(QUESTION)
    offline = offline_logits(backbone, ids, positions, encoded, keeps, drops)
    assert max_difference(streaming, offline[-streaming.shape[0] :]) <= 1e-4


@pytest.mark.parametrize(("kind", "axis"), [("video", 0), ("audio", 1), ("audio", 2)])
def test_parity_breaks_when_one_position_is_off(backbone, chunks, monkeypatch, kind, axis):
    """The check is sharp: one token one step off on one axis shows (audio height included)."""
    frames, _, encoded = chunks
    _, ids, positions = official_clip(backbone, frames, audio_length=4 * len(encoded))
    original = backbone.chunk_positions

    def off_by_one(chunk, slot, base):
        video, audio = (p.clone() for p in original(chunk, slot, base))
        if slot == 1:
            (video if kind == "video" else audio)[axis, 1] += 1
        return video, audio

    monkeypatch.setattr(backbone, "chunk_positions", off_by_one)
    streaming = stream(backbone, encoded, [None] * 3, [False] * 3).question_logits(QUESTION)
    monkeypatch.undo()
    offline = offline_logits(backbone, ids, positions, encoded, [None] * 3, [False] * 3)
    assert max_difference(streaming, offline[-streaming.shape[0] :]) > 1e-4


def test_previous_policy_eviction_keeps_parity(backbone, chunks):
    frames, _, encoded = chunks
    _, ids, positions = official_clip(backbone, frames, audio_length=4 * len(encoded))
    session = StreamSession(backbone, SessionSettings(), SYSTEM)
    session.append_chunk(encoded[0])
    last = session.append_chunk(encoded[1])
    session.evict_video(last, encoded[1])
    session.append_chunk(encoded[2])
    offline = offline_logits(backbone, ids, positions, encoded, [None] * 3, [False, True, False])
    streaming = session.question_logits(QUESTION)
    assert max_difference(streaming, offline[-streaming.shape[0] :]) <= 1e-4


def test_a_long_stream_rebases_and_answers_as_without(backbone, chunks):
    _, _, encoded = chunks
    budget = 2 * (encoded[0].num_video_tokens + 4)
    sequence = [encoded[i % 3] for i in range(12)]
    _, base = backbone.prefix_positions(len(backbone.prompt_layout(SYSTEM).prefix))
    limited = SessionSettings(token_budget=budget, position_limit=base + 36, position_headroom=16)
    rebased = stream(backbone, sequence, [None] * 12, [False] * 12, limited)
    plain = stream(backbone, sequence, [None] * 12, [False] * 12, SessionSettings(token_budget=budget))
    assert rebased.stats.rebases >= 1 and plain.stats.rebases == 0
    assert max_difference(rebased.question_logits(QUESTION), plain.question_logits(QUESTION)) <= 1e-4


def test_contextguard_pruning_through_the_pipeline_keeps_parity(backbone, clip):
    settings = settings_for(backbone.model_id)
    chunks = list(iter_chunks(clip("moving.mp4", 6, motion="moving"), settings.chunk))
    pipeline = create_pipeline(backbone, settings)
    reports = [pipeline.process(chunk) for chunk in chunks]
    assert len(reports) == 3 and all(r.audio_tokens == 4 for r in reports)
    assert all(r.video_tokens_kept < r.video_tokens_in for r in reports if not r.video_dropped)
    assert any(r.video_tokens_kept > 0 for r in reports)
    encoded = [backbone.encode(backbone.preprocess(c.frames, c.audio)) for c in chunks]
    keeps = [torch.tensor(sorted({*r.semantic, *r.spatial}), dtype=torch.long) for r in reports]
    drops = [r.video_dropped for r in reports]
    _, ids, positions = official_clip(backbone, [c.frames for c in chunks], audio_length=4 * len(chunks))
    offline = offline_logits(backbone, ids, positions, encoded, keeps, drops)
    streaming = pipeline.session.question_logits(QUESTION)
    assert max_difference(streaming, offline[-streaming.shape[0] :]) <= 1e-4
    assert pipeline.session.answer("Describe it.")  # a real (random) answer comes out
