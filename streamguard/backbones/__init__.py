"""Omni-LLM backbones behind one protocol; `load_backbone` picks one from the settings."""

from __future__ import annotations

from streamguard.backbones.base import Backbone, BackboneError, ChunkInputs, EncodedChunk, PromptLayout
from streamguard.config import ChunkSettings, ModelSettings

__all__ = ["Backbone", "BackboneError", "ChunkInputs", "EncodedChunk", "PromptLayout", "load_backbone"]


def load_backbone(model: ModelSettings, chunk: ChunkSettings) -> Backbone:
    if model.backbone == "qwen2.5-omni":
        from streamguard.backbones.qwen_omni import QwenOmniBackbone

        return QwenOmniBackbone.from_settings(model, chunk)
    raise BackboneError(f"backbone {model.backbone!r} is not available yet; known: qwen2.5-omni")
