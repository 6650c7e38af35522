"""Loading a backbone: the tiny checkpoint round trip and clear errors for bad model paths."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from streamguard.backbones import BackboneError, load_backbone
from streamguard.backbones.packed_attention import PACKED_SDPA
from streamguard.config import load_settings


def settings_for(path: str):
    settings = load_settings("tiny")
    return settings.model.model_copy(update={"path": path}), settings.chunk


def test_tiny_checkpoint_loads_back_as_the_real_thinker_class(checkpoint):
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    backbone = load_backbone(*settings_for(str(checkpoint)))
    assert type(backbone.model) is Qwen2_5OmniThinkerForConditionalGeneration
    assert type(backbone.processor) is Qwen2_5OmniProcessor
    assert backbone.model.config._attn_implementation == "sdpa"
    assert backbone.dtype == torch.float32 and backbone.device.type == "cpu"
    assert not any("talker" in name for name, _ in backbone.model.named_parameters())
    # A second load of the same folder gives the same weights: nothing random at load time.
    again = load_backbone(*settings_for(str(checkpoint)))
    for (name, a), (_, b) in zip(
        backbone.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match=r"no config\.json"):
        load_backbone(*settings_for(str(tmp_path / "nowhere")))


def test_a_config_naming_a_non_omni_model_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BackboneError, match="holds a 'llama' model"):
        load_backbone(*settings_for(str(tmp_path)))


def test_an_unknown_backbone_name_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="backbone"):
        load_settings("tiny", model={"backbone": "gpt-omni"})


def test_the_vision_tower_takes_its_own_attention_implementation(checkpoint):
    model, chunk = settings_for(str(checkpoint))
    eager_text = model.model_copy(
        update={"attn_implementation": "eager", "vision_attn_implementation": "sdpa"}
    )
    thinker = load_backbone(eager_text, chunk).model
    assert thinker.model.language_model.config._attn_implementation == "eager"
    assert thinker.model.audio_tower.config._attn_implementation == "eager"
    assert thinker.model.visual.config._attn_implementation == "sdpa"


def test_the_towers_run_the_packed_attention_by_default_on_cpu_and_the_language_model_its_own(checkpoint):
    thinker = load_backbone(*settings_for(str(checkpoint))).model  # "auto" on a CPU
    assert thinker.model.visual.config._attn_implementation == PACKED_SDPA
    assert thinker.model.audio_tower.config._attn_implementation == PACKED_SDPA
    assert thinker.model.language_model.config._attn_implementation == "sdpa"
    assert thinker.config.get_text_config()._attn_implementation == "sdpa"


def test_flash_vision_attention_without_cuda_falls_back_to_the_packed_one_and_says_why(checkpoint, caplog):
    model, chunk = settings_for(str(checkpoint))
    with caplog.at_level(logging.WARNING, logger="streamguard.backbones"):
        flash = model.model_copy(update={"vision_attn_implementation": "flash_attention_2"})
        thinker = load_backbone(flash, chunk).model
    assert thinker.model.visual.config._attn_implementation == PACKED_SDPA
    assert "asks for flash_attention_2 but no CUDA device" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamguard.backbones"):
        auto = load_backbone(model, chunk).model  # "auto": packed here, nothing to warn about
    assert auto.model.visual.config._attn_implementation == PACKED_SDPA and "flash" not in caplog.text
