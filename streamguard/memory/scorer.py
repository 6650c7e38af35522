"""Which offloaded chunks a question is about ("auto" recall), after ReKV.

ReKV scores blocks of offloaded KV by the model's own attention: the question's query vectors
against one representative key per block, per layer. We do the same at a few decoder layers,
with one change that matters for a live stream. Stored keys carry their rotary positions, and
the dot product of a query with a rotated key depends on how far apart the two are; scored at
their real distance, an hour-old chunk would lose to a minute-old one on distance alone, which
is the wrong prior for "when did the van arrive?". So each chunk's summary is its keys moved
(exactly, by the same uniform rotation a re-base uses) to the stream's first slot, then
averaged per KV head; the question's pre-rotary queries, averaged over its own words, are
rotated to the position just after that slot. Every chunk is then scored as if it were the
chunk right before the question: the score compares content, not age. Per chunk this keeps
layers × KV heads × head dim floats (6 KiB at 7B), so the index of an hour stays in memory.

The queries come from a forward of the question over the device window (prefix and recent
chunks), captured where each scoring layer's queries are final but not yet rotated: the query
projection, or its per-head norm where the model has one (Qwen3); the cache is cut back after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from streamguard.backbones.base import Backbone
from streamguard.engine import kv
from streamguard.engine.session import StreamSession
from streamguard.memory.records import Layers
from streamguard.memory.rotation import rerotated


def decoder_layers(backbone: Backbone) -> Any:
    """The decoder layers of a Qwen-based backbone's language model."""
    return backbone.model.model.language_model.layers  # type: ignore[attr-defined]


def default_score_layers(num_layers: int) -> list[int]:
    """Three layers spread over the depth (deeper layers carry more meaning, the last most)."""
    return sorted({num_layers // 3, (2 * num_layers) // 3, num_layers - 1})


def _query_module(attention: Any) -> Any:
    """The module whose output is a layer's queries before rotary: (1, n, heads·dim) or
    (1, n, heads, dim)."""
    return getattr(attention, "q_norm", None) or attention.q_proj


class QueryScorer:
    def __init__(self, backbone: Backbone, layers: list[int] | None):
        count = len(decoder_layers(backbone))
        self.layers = layers if layers is not None else default_score_layers(count)
        if not self.layers or any(not 0 <= layer < count for layer in self.layers):
            raise ValueError(f"memory.score_layers must name layers in [0, {count}); got {self.layers}")
        self.backbone = backbone

    def summary(self, layers: Layers, shift: int) -> torch.Tensor:
        """(score layers, KV heads, head dim): a chunk's keys moved down by `shift` positions (to
        the stream's first slot), averaged over its tokens."""
        chosen = rerotated(self.backbone, [(layers[i][0].float(), layers[i][1]) for i in self.layers], shift)
        return torch.stack([keys[0].mean(dim=1) for keys, _ in chosen]).cpu()

    def question_queries(self, session: StreamSession, ids: list[int], words: slice) -> torch.Tensor:
        """(score layers, heads, head dim): the question's queries over the session's window,
        averaged over `words` (its own tokens) and rotated to the position after the first slot."""
        captured: dict[int, torch.Tensor] = {}
        length = kv.cache_length(session.cache)
        try:
            with self._capture(captured):
                session.backbone.forward(
                    session.backbone.embed_tokens(ids),
                    session.question_positions(len(ids)),
                    session.cache,
                    "none",
                )
        finally:
            kv.truncate(session.cache, length)
        head_dim = session.cache.layers[0].keys.shape[-1]
        means = [captured[i][0, words].float().mean(dim=0).view(-1, head_dim) for i in self.layers]
        target = session.base + session.backbone.chunk_period()
        holder = [(q[None, :, None, :], q) for q in means]  # (1, heads, 1, dim) as if cached keys
        return torch.stack([q[0, :, 0] for q, _ in rerotated(self.backbone, holder, -target)]).cpu()

    @contextmanager
    def _capture(self, captured: dict[int, torch.Tensor]) -> Iterator[None]:
        modules = decoder_layers(self.backbone)
        handles = [
            _query_module(modules[i].self_attn).register_forward_hook(
                lambda _m, _in, out, i=i: captured.__setitem__(i, out.detach().flatten(2))
            )
            for i in self.layers
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def scores(queries: torch.Tensor, summaries: torch.Tensor) -> torch.Tensor:
        """(chunks,): attention logits of the queries (layers, heads, dim) against each chunk's
        summary (chunks, layers, KV heads, dim), averaged over heads, summed over layers."""
        layers, heads, dim = queries.shape
        kv_heads = summaries.shape[2]
        grouped = queries.view(layers, kv_heads, heads // kv_heads, dim)
        logits = torch.einsum("lhgd,clhd->clhg", grouped, summaries) / math.sqrt(dim)
        return logits.mean(dim=(2, 3)).sum(dim=1)
