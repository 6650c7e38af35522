"""Long memory on the other backbones (Qwen3-Omni, video-SALMONN 2+), through their real
encoders and pipelines: a span recalled through disk after re-bases answers with the logits the
same span recalled from host memory without re-bases gives (re-rotation is exact on every
backbone's rotary layout), "auto" recall runs, and the live cache is left as it was."""

from __future__ import annotations

import pytest
import torch
from cpu_helpers import one_torch_thread
from service_helpers import random_chunks

from streamguard.backbones import load_backbone
from streamguard.config import MemorySettings, load_settings
from streamguard.engine import kv
from streamguard.engine.pipeline import create_pipeline
from streamguard.engine.session import SamplingParams
from streamguard.memory.manager import MemoryManager
from streamguard.memory.spec import SpanRecall

QUESTION = "What happened first?"


@pytest.fixture(scope="module", params=["tiny-qwen3-omni", "tiny-video-salmonn"])
def config(request):
    settings = load_settings(request.param, pruning={"method": "none"})
    with one_torch_thread():
        yield settings, load_backbone(settings.model, settings.chunk)


def streamed(backbone, settings, memory: MemoryManager, name: str, position_limit: int | None):
    """Eight random chunks through the backbone's pipeline, a budget of about two chunks."""
    chunks = random_chunks(8, seed=3)
    first = backbone.encode(backbone.preprocess(chunks[0].frames, chunks[0].audio))
    budget = 2 * (first.num_video_tokens + int(first.audio.shape[0])) + 1
    session = settings.session.model_copy(
        update={"token_budget": budget, "position_limit": position_limit, "position_headroom": 64}
    )
    pipeline = create_pipeline(backbone, settings.model_copy(update={"session": session}))
    stream_memory = memory.open(name, pipeline.session)
    for chunk in chunks:
        pipeline.process(chunk)
    return pipeline.session, stream_memory


def test_recall_is_exact_through_disk_and_re_bases_on_every_backbone(config, tmp_path):
    settings, backbone = config
    with one_torch_thread():
        host = MemoryManager(backbone, MemorySettings(enabled=True, root=str(tmp_path / "host")), 2.0)
        disk = MemoryManager(
            backbone, MemorySettings(enabled=True, root=str(tmp_path / "disk"), host_bytes=0), 2.0
        )
        plain, plain_memory = streamed(backbone, settings, host, "plain", None)
        period = backbone.chunk_period()
        rebased, rebased_memory = streamed(backbone, settings, disk, "rebased", plain.base + 5 * period + 64)
        assert rebased.stats.rebases >= 1 and plain.stats.rebases == 0
        assert [c.index for c in rebased.chunks] == [c.index for c in plain.chunks]
        span = SpanRecall(2.0, 8.0)
        reference = plain.question_logits(QUESTION, recall=plain_memory.recall(span))
        recall = rebased_memory.recall(span)
        logits = rebased.question_logits(QUESTION, recall=recall)
        assert [(s.from_s, s.to_s) for s in recall.spans] == [(2.0, 8.0)]
        assert (logits - reference).abs().max().item() <= 1e-4

        before = kv.snapshot(rebased.cache)
        auto = rebased_memory.recall("auto")
        "".join(rebased.ask(QUESTION, SamplingParams(max_new_tokens=3), recall=auto))
        assert auto.spans and auto.tokens > 0
        assert rebased.stats.last_answer.context_tokens == rebased.context_tokens + auto.tokens
        after = kv.snapshot(rebased.cache)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(before, after, strict=True))
        host.close_all()
        disk.close_all()
