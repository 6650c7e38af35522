"""The per-chunk pruning plug-in the stream pipeline calls: the pixel pre-filter, selection and
the online drop rule, with one stream's state for each."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from streamguard.backbones.base import Backbone, EncodedChunk
from streamguard.config import DropPolicy, PruningSettings, ReferenceMode
from streamguard.pruning.a2v import SemanticReference, load_predictor
from streamguard.pruning.baselines import select_for_method
from streamguard.pruning.prefilter import Prefilter, Screening
from streamguard.pruning.select import Selection
from streamguard.pruning.temporal import OnlineDropRule

log = logging.getLogger("streamguard.pruning")


@dataclass
class PruneDecision:
    """What happens to one chunk's video: the tokens kept, and the temporal rule's verdict."""

    selection: Selection | None  # None for a chunk without video
    drop_video: bool  # the new chunk's video is redundant (policy `current`)
    evict_previous: bool  # the previous chunk's video is redundant (policy `previous`)
    similarity: float | None  # cosine with the chunk compared against
    reference_mode: ReferenceMode
    select_ms: float

    @property
    def keep(self) -> torch.Tensor | None:
        return None if self.selection is None else self.selection.indices


class Pruner:
    """ContextGuard (or a baseline) configured from the `pruning:` settings, for one stream."""

    def __init__(self, settings: PruningSettings, backbone: Backbone):
        self.settings = settings
        predictor = None
        if settings.predictor_path:
            predictor = load_predictor(
                settings.predictor_path,
                backbone.model_id,
                backbone.hidden_size,
                backbone.device,
                backbone.dtype,
            )
            log.info("A2V predictor loaded from %s", settings.predictor_path)
        self.reference = SemanticReference(predictor)
        self._temporal(settings)
        self.generator = torch.Generator().manual_seed(settings.seed)

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """Prune the chunks to come with `changes` applied to the settings (validated as the
        config's are; the predictor stays). A new drop policy starts the drop rule (and the
        pre-filter) afresh: the next chunk keeps its video and is compared with nothing."""
        settings = PruningSettings.model_validate({**self.settings.model_dump(), **changes})
        if _policy(settings) != self.drop_rule.policy or settings.tau_drop != self.drop_rule.tau:
            self._temporal(settings)
        self.settings = settings

    def _temporal(self, settings: PruningSettings) -> None:
        """A fresh drop rule, and pre-filter: the pre-filter drops video as the drop rule does,
        so it runs only where the rule does."""
        policy = _policy(settings)
        self.drop_rule = OnlineDropRule(settings.tau_drop, policy)
        enabled = settings.prefilter.enabled and policy != "off"
        self.prefilter = Prefilter(settings.prefilter) if enabled else None

    @property
    def reference_mode(self) -> ReferenceMode:
        """What the semantic scores are measured against: ĥ_t, the mean audio, or nothing ("none")."""
        method = self.settings.method
        if method == "none":
            return "none"
        return "mean_audio" if method == "mean_audio" else self.reference.mode

    @torch.inference_mode()
    def plan(self, encoded: EncodedChunk, index: int, screening: Screening | None = None) -> PruneDecision:
        """Chunk number `index`: the video tokens to keep and the drop rule's verdict, given the
        pre-filter's: a skipped chunk's video is dropped unseen, a "keep" one is kept."""
        started = time.perf_counter()
        method, mode = self.settings.method, self.reference_mode
        if screening is not None and screening.skip:
            return PruneDecision(None, True, False, None, mode, 0.0)
        if encoded.video is None:
            return PruneDecision(None, False, False, None, mode, 0.0)
        # "mean_audio" scores against the chunk's own audio and "none" scores nothing: neither needs ĥ_t.
        reference = encoded.audio if method in ("none", "mean_audio") else self.reference(encoded.audio)
        selection = select_for_method(
            method,
            encoded.video,
            reference,
            self.settings.rho_sem,
            self.settings.rho_spa,
            generator=self.generator,
        )
        keep = screening is not None and screening.action == "keep"
        decision = self.drop_rule.decide(encoded.video_flat.mean(dim=0), index, keep=keep)
        if encoded.video.is_cuda:
            torch.cuda.synchronize(encoded.video.device)
        return PruneDecision(
            selection=selection,
            drop_video=decision.drop_current,
            evict_previous=decision.evict_previous,
            similarity=decision.similarity,
            reference_mode=mode,
            select_ms=(time.perf_counter() - started) * 1000,
        )


def _policy(settings: PruningSettings) -> DropPolicy:
    """Full tokens ("none") never drop a chunk's video."""
    return "off" if settings.method == "none" else settings.drop_policy
