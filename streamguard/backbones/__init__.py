"""Omni-LLM backbones behind one protocol; `load_backbone` picks one from the settings."""

from __future__ import annotations

from streamguard.backbones.base import Backbone, BackboneError, ChunkInputs, EncodedChunk, PromptLayout
from streamguard.config import ChunkSettings, ModelSettings

__all__ = ["Backbone", "BackboneError", "ChunkInputs", "EncodedChunk", "PromptLayout", "load_backbone"]


def load_backbone(model: ModelSettings, chunk: ChunkSettings) -> Backbone:
    """The backbone `model.backbone` names, loaded from `model.path`; a checkpoint of the other
    family is refused with the setting that would load it."""
    if model.backbone == "qwen2.5-omni":
        from streamguard.backbones.qwen_omni import QwenOmniBackbone

        return QwenOmniBackbone.from_settings(model, chunk)
    if model.backbone == "qwen3-omni":
        from streamguard.backbones.qwen3_omni import Qwen3OmniBackbone

        return Qwen3OmniBackbone.from_settings(model, chunk)
    if model.backbone == "video-salmonn2+":
        from streamguard.backbones.salmonn import SalmonnBackbone

        return SalmonnBackbone.from_settings(model, chunk)
    raise BackboneError(
        f"backbone {model.backbone!r} is not available; known: qwen2.5-omni, qwen3-omni, video-salmonn2+"
    )
