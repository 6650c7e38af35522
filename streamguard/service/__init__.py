"""The live service: REST and websocket API over the stream registry and the inference worker."""

from __future__ import annotations

from streamguard.service.app import create_app, server_config

__all__ = ["create_app", "server_config"]
