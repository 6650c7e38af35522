"""`random:` builds: the released architectures with random weights, checked against the published
config.json numbers (sources in streamguard/backbones/released.py: the thinker configs saved from
Qwen/Qwen2.5-Omni-7B and -3B, Megatron-Bridge's Qwen2.5-Omni provider docs, Qwen2.5-VL-7B's
config, Qwen3-Omni-30B-A3B's printed config), and one chunk pushed through the 7B thinker and the
Qwen3-Omni thinker at real width with a few layers per tower."""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from cpu_helpers import one_torch_thread

from streamguard.backbones import BackboneError, load_backbone
from streamguard.backbones.random_build import instantiate, parse_random_path, resolve_random
from streamguard.config import SessionSettings, load_settings
from streamguard.engine.session import StreamSession

# The published numbers, written out here rather than read from released.py, so a typo there fails.
QWEN_OMNI = {
    "random:qwen2.5-omni-7b": {
        "vocab": 152064,
        "hidden": 3584,
        "ffn": 18944,
        "layers": 28,
        "heads": 28,
        "kv_heads": 4,
        "params_b": 8.93,  # the 7B thinker: 8.93 B parameters (model card: "7B" LLM + towers)
    },
    "random:qwen2.5-omni-3b": {
        "vocab": 151936,
        "hidden": 2048,
        "ffn": 11008,
        "layers": 36,
        "heads": 16,
        "kv_heads": 2,
        "params_b": 4.70,
    },
}

# Qwen3-Omni's media tokens in its released thinker_config.
QWEN3_OMNI_IDS = {
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|video_pad|>": 151656,
    "<|audio_start|>": 151669,
    "<|audio_pad|>": 151675,
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMGUARD_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("path", sorted(QWEN_OMNI))
def test_qwen_omni_builds_the_released_architecture(path):
    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    numbers = QWEN_OMNI[path]
    folder = resolve_random(path)
    thinker = instantiate(
        Qwen2_5OmniThinkerForConditionalGeneration, folder, dtype=torch.bfloat16, device=torch.device("meta")
    )
    hidden, head_dim = numbers["hidden"], 128
    embed = thinker.get_input_embeddings().weight
    assert tuple(embed.shape) == (numbers["vocab"], hidden)
    assert tuple(thinker.lm_head.weight.shape) == (numbers["vocab"], hidden)
    assert thinker.lm_head.weight is not embed  # untied, as released (transformers' default ties)
    text = thinker.model.language_model
    assert len(text.layers) == numbers["layers"]
    attention = text.layers[0].self_attn
    assert tuple(attention.q_proj.weight.shape) == (numbers["heads"] * head_dim, hidden)
    assert tuple(attention.k_proj.weight.shape) == (numbers["kv_heads"] * head_dim, hidden)
    assert tuple(text.layers[0].mlp.gate_proj.weight.shape) == (numbers["ffn"], hidden)
    assert text.rotary_emb.mrope_section == [16, 24, 24]
    assert text.rotary_emb.config.rope_parameters["rope_theta"] == 1_000_000.0
    assert text.config.max_position_embeddings == 32768
    vision = thinker.model.visual
    assert len(vision.blocks) == 32 and vision.fullatt_block_indexes == [7, 15, 23, 31]
    assert vision.window_size == 112 and vision.patch_size == 14 and vision.spatial_merge_size == 2
    assert tuple(vision.blocks[0].attn.q.weight.shape) == (1280, 1280)  # default config: 3584
    assert tuple(vision.blocks[0].mlp.gate_proj.weight.shape) == (3420, 1280)
    assert tuple(vision.merger.mlp[2].weight.shape) == (hidden, 5120)
    audio = thinker.model.audio_tower
    assert len(audio.layers) == 32 and audio.n_window == 100
    assert tuple(audio.layers[0].fc1.weight.shape) == (5120, 1280)
    assert tuple(audio.proj.weight.shape) == (hidden, 1280)
    params = sum(p.numel() for p in thinker.parameters()) / 1e9
    assert params == pytest.approx(numbers["params_b"], abs=0.01)

    processor = AutoProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    released_ids = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|AUDIO|>": 151646, "<|VIDEO|>": 151656}
    for token, token_id in released_ids.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert thinker.config.video_token_index == 151656 and thinker.config.audio_token_index == 151646
    size = processor.video_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (3136, 12845056)


def test_the_layer_override_cuts_depth_only():
    from transformers import Qwen2_5OmniThinkerConfig

    config = Qwen2_5OmniThinkerConfig.from_pretrained(resolve_random("random:qwen2.5-omni-7b?layers=2,3,1"))
    assert config.text_config.num_hidden_layers == 2 and config.text_config.hidden_size == 3584
    assert config.vision_config.depth == 3 and config.vision_config.hidden_size == 1280
    assert config.vision_config.fullatt_block_indexes == [2]  # the last block attends fully
    assert config.audio_config.encoder_layers == 1 and config.audio_config.d_model == 1280


@pytest.mark.parametrize(
    "path, message",
    [
        ("random:qwen2.5-omni-70b", "no random build 'qwen2.5-omni-70b'; known: qwen2.5-omni-7b"),
        ("random:qwen2.5-omni-7b?layers=2,2", "layers=TEXT,VISION,AUDIO"),
        ("random:qwen2.5-omni-7b?depth=2,2,2", "layers=TEXT,VISION,AUDIO"),
        ("random:qwen2.5-omni-7b?layers=2,0,2", "layers=TEXT,VISION,AUDIO"),
    ],
)
def test_a_bad_random_path_is_a_clear_error(path, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_random_path(path)


def test_the_settings_refuse_a_random_build_of_the_other_backbone():
    with pytest.raises(ValueError, match=r"loads as model.backbone video-salmonn2\+"):
        load_settings("tiny", model={"path": "random:video-salmonn2plus-7b"})
    with pytest.raises(ValueError, match="no random build"):
        load_settings("tiny", model={"path": "random:gpt-omni"})


def test_a_random_build_that_is_no_checkpoint_is_refused_by_the_other_backbone():
    settings = load_settings("tiny-video-salmonn", model={"backbone": "video-salmonn2+"})
    folder = resolve_random("random:qwen2.5-omni-7b?layers=1,1,1")
    with pytest.raises(BackboneError, match=r"set model\.backbone to qwen2\.5-omni"):
        load_backbone(settings.model.model_copy(update={"path": folder}), settings.chunk)


@contextmanager
def one_encoded_chunk(config: str, path: str, hidden: int = 3584, side: int = 112):
    """The random build loaded in bf16 on one thread, one 2 s chunk of side×side frames encoded;
    the model is freed after (the 7B embeddings alone are 2.2 GB)."""
    settings = load_settings(config, model={"path": path, "dtype": "bfloat16"})
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(4)]
    audio = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    with one_torch_thread():
        backbone = load_backbone(settings.model, settings.chunk)
        try:
            assert backbone.random_weights and backbone.hidden_size == hidden
            assert backbone.dtype == torch.bfloat16
            yield backbone, backbone.encode(backbone.preprocess(frames, audio))
        finally:
            del backbone
            gc.collect()


def test_one_chunk_through_the_7b_thinker_at_real_width_with_two_layers():
    with one_encoded_chunk("tiny", "random:qwen2.5-omni-7b?layers=2,2,2") as (backbone, encoded):
        assert encoded.video.shape == (2, 4, 4, 3584)  # 112 px / 14 / 2 = 4, 4 frames / 2 = 2
        assert encoded.audio.shape == (50, 3584)  # 2 s: 25 tokens a second
        session = StreamSession(backbone, SessionSettings(), "You are a helpful assistant.")
        session.append_chunk(encoded)
        logits = session.question_logits("What happens?")
        assert logits.shape[-1] == 152064 and bool(torch.isfinite(logits).all())
        # 2 layers × 2 (keys, values) × 4 KV heads × 128 × 2 bytes a token
        assert session.cache_bytes == session.cache_tokens * 2 * 2 * 4 * 128 * 2


def test_video_salmonn_builds_qwen25_vl_7b_with_the_published_audio_branch():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from streamguard.backbones.salmonn_audio import WindowQFormerAudio

    folder = resolve_random("random:video-salmonn2plus-7b")
    model = instantiate(
        Qwen2_5_VLForConditionalGeneration, folder, dtype=torch.bfloat16, device=torch.device("meta")
    )
    # Qwen2.5-VL-7B-Instruct: 8.29 B parameters, 128000 positions, untied, mRoPE [16, 24, 24]
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(8.29, abs=0.01)
    assert model.config.get_text_config().max_position_embeddings == 128000
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert model.model.language_model.rotary_emb.mrope_section == [16, 24, 24]
    assert len(model.model.visual.blocks) == 32 and tuple(model.model.visual.merger.mlp[2].weight.shape) == (
        3584,
        5120,
    )
    with torch.device("meta"):
        audio = WindowQFormerAudio(model.config.audio_config, 3584)
    assert len(audio.encoder.layers) == 32 and audio.encoder.config.d_model == 1280  # Whisper-large-v3
    assert audio.qformer.config.hidden_size == 3072 and len(audio.qformer.encoder.layer) == 2
    assert model.config.audio_token_id == 151665


def test_one_chunk_through_video_salmonn_at_real_width_with_one_layer():
    path = "random:video-salmonn2plus-7b?layers=1,1,1"
    with one_encoded_chunk("tiny-video-salmonn", path) as (_, encoded):
        assert encoded.video.shape == (2, 4, 4, 3584) and encoded.audio.shape == (4, 3584)
        assert bool(torch.isfinite(encoded.audio).all())


def test_qwen3_omni_builds_the_released_architecture():
    """Qwen3-Omni-30B-A3B's thinker: a 48-layer mixture-of-experts decoder (128 experts, 8 a token)
    with interleaved mRoPE, the 27-block vision tower with deepstack, the 32-layer audio encoder."""
    from transformers import AutoProcessor, Qwen3OmniMoeThinkerForConditionalGeneration

    folder = resolve_random("random:qwen3-omni-30b-a3b")
    thinker = instantiate(
        Qwen3OmniMoeThinkerForConditionalGeneration, folder, dtype=torch.bfloat16, device=torch.device("meta")
    )
    embed = thinker.get_input_embeddings().weight
    assert tuple(embed.shape) == (152064, 2048) and thinker.lm_head.weight is not embed
    text = thinker.model.language_model
    assert len(text.layers) == 48 and text.config.max_position_embeddings == 65536
    attention = text.layers[0].self_attn
    assert tuple(attention.q_proj.weight.shape) == (32 * 128, 2048)  # heads of 128: wider than 2048/32
    assert tuple(attention.k_proj.weight.shape) == (4 * 128, 2048)
    experts = text.layers[0].mlp.experts
    assert experts.num_experts == 128 and text.config.num_experts_per_tok == 8
    assert tuple(experts.down_proj.shape) == (128, 2048, 768)
    assert text.rotary_emb.mrope_section == [24, 20, 20]
    assert text.rotary_emb.config.rope_parameters["interleaved"] is True
    vision = thinker.model.visual
    assert len(vision.blocks) == 27 and vision.deepstack_visual_indexes == [8, 16, 24]
    assert vision.patch_size == 16 and vision.spatial_merge_size == 2
    assert tuple(vision.merger.mlp[2].weight.shape) == (2048, 4608)
    audio = thinker.model.audio_tower
    assert len(audio.layers) == 32 and audio.n_window == 50 and audio.n_window_infer == 800
    # 31.72 B: decoder 30.22 B with its LM head 0.31 B (keras-hub's 30532122624 for the two, to
    # within the norms), audio 0.65 B, vision 0.54 B
    assert sum(p.numel() for p in thinker.parameters()) / 1e9 == pytest.approx(31.72, abs=0.01)
    config = thinker.config
    assert config.position_id_per_seconds == 13 and config.vision_start_token_id == 151652
    assert (config.video_token_id, config.audio_token_id, config.audio_start_token_id) == (
        151656,
        151675,
        151669,
    )

    processor = AutoProcessor.from_pretrained(folder)
    for token, token_id in QWEN3_OMNI_IDS.items():
        assert processor.tokenizer.convert_tokens_to_ids(token) == token_id
    size = processor.video_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (128 * 32 * 32, 768 * 32 * 32)


def test_one_chunk_through_the_qwen3_omni_thinker_at_real_width_with_deepstack():
    """One MoE decoder layer, nine vision blocks (so block 8 feeds deepstack), one audio layer."""
    path = "random:qwen3-omni-30b-a3b?layers=1,9,1"
    with one_encoded_chunk("tiny-qwen3-omni", path, hidden=2048, side=128) as (backbone, encoded):
        assert encoded.video.shape == (2, 4, 4, 2048)  # 128 px / 16 / 2 = 4, 4 frames / 2 = 2
        assert encoded.deepstack.shape == (1, 2, 4, 4, 2048)
        assert encoded.audio.shape == (26, 2048)  # 2 s: 13 tokens a second
        session = StreamSession(backbone, SessionSettings(), "You are a helpful assistant.")
        session.append_chunk(encoded, keep=torch.arange(0, encoded.num_video_tokens, 2))
        logits = session.question_logits("What happens?")
        assert logits.shape[-1] == 152064 and bool(torch.isfinite(logits).all())
        # 1 layer × 2 (keys, values) × 4 KV heads × 128 × 2 bytes a token
        assert session.cache_bytes == session.cache_tokens * 1 * 2 * 4 * 128 * 2


@pytest.mark.parametrize(
    "config, path", [("random-7b", "random:qwen2.5-omni-7b"), ("random-3b", "random:qwen2.5-omni-3b")]
)
def test_the_gpu_runbook_configs_name_the_released_builds(config, path):
    model = load_settings(config).model
    assert (model.path, model.backbone, model.dtype) == (path, "qwen2.5-omni", "bfloat16")
    assert (model.min_pixels, model.max_pixels) == (100352, 602112)  # the 7B config's real bounds
    assert model.vision_attn_implementation == "auto"
