"""Ingest: sources of timestamped audio and video, cut into aligned chunks by one chunker."""

from __future__ import annotations


class MediaError(ValueError):
    """Media that cannot be opened or decoded: corrupt, truncated, or without usable streams."""
