"""Long memory (issue 14): an hour of stream on a rolling device cache with evicted chunks kept
in host memory and on disk, and a question at 10, 30 and 60 minutes answered four ways:

- `auto`: the chunks that best match the question recalled within `memory.recall_tokens`, half
  the token budget (the 7B defaults' 8192 beside 16384);
- `span`: the five minutes before the recent window recalled exactly (all offloaded chunks);
- `recent`: the device window only;
- `reprefill`: a fresh session prefilled with every chunk of the stream so far, then the
  question (what answering over the whole stream costs without memory).

The stream is synthesized: a pool of random chunk embeddings at the backbone's width (no
encoders: they are the same whatever the memory does), appended one after the other as fast as
the session takes them. Device bytes are sampled after every chunk, so the figure shows whether
the device cache stays flat while host and disk memory grow. Each answer is timed `reps` times
and the best time kept (the least disturbed run on a shared machine).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from streamguard.backbones.base import Backbone, EncodedChunk
from streamguard.bench.flops import QWEN25_OMNI_7B, kv_bytes_per_token
from streamguard.bench.latency import QUESTION, timed_answer
from streamguard.bench.workload import Tick
from streamguard.config import Settings
from streamguard.engine.session import Recall, SamplingParams, StreamSession
from streamguard.memory.manager import MemoryManager
from streamguard.memory.spec import SpanRecall

POOL = 16  # distinct synthesized chunks, cycled
VIDEO_GRID = (2, 2, 2)  # (F, H, W) video tokens a synthesized chunk keeps, as if pruned
AUDIO_TOKENS = 50  # Qwen2.5-Omni's 2 s of audio
SPAN_MINUTES = 5.0


def steps(minutes: Sequence[float], seconds_per_chunk: float) -> int:
    return round(max(minutes) * 60 / seconds_per_chunk) + len(minutes)


def measure_long_memory(
    backbone: Backbone,
    settings: Settings,
    minutes: Sequence[float],
    reps: int,
    tick: Tick,
    folder: Path,
) -> dict[str, Any]:
    seconds = settings.chunk.seconds
    checkpoints = {round(m * 60 / seconds): m for m in minutes}
    total = max(checkpoints)
    chunk_tokens = VIDEO_GRID[0] * VIDEO_GRID[1] * VIDEO_GRID[2] + AUDIO_TOKENS
    span_chunks = round(SPAN_MINUTES * 60 / seconds)
    root = Path(tempfile.mkdtemp(prefix="long-memory-", dir=folder))
    session = StreamSession(backbone, settings.session, settings.model.system_prompt)
    per_token = session.cache_bytes / session.cache_tokens
    memory_settings = settings.memory.model_copy(
        update={
            "enabled": True,
            "root": str(root),
            "retention_s": total * seconds + 60,
            # auto recalls half a window, as the 7B defaults do (8192 beside 16384)
            "recall_tokens": settings.session.token_budget // 2,
            "span_tokens": span_chunks * chunk_tokens,
            # a quarter of the stream in host memory: the rest goes through disk
            "host_bytes": int(total * chunk_tokens * per_token / 4),
        }
    )
    manager = MemoryManager(backbone, memory_settings, seconds)
    pool = _synthesized_chunks(backbone, POOL)
    params = SamplingParams(max_new_tokens=settings.session.max_new_tokens)
    memory = manager.open("bench", session)
    device_bytes: list[int] = []
    host_max = disk_max = 0
    latency: dict[str, dict[str, float | None]] = {m: {} for m in ("auto", "span", "recent", "reprefill")}
    recalled: dict[str, dict[str, int]] = {"auto": {}, "span": {}}
    try:
        for index in range(total):
            session.append_chunk(pool[index % POOL], index=index)
            device_bytes.append(session.cache_bytes)
            stats = memory.stats()
            host_max, disk_max = max(host_max, stats.host_bytes), max(disk_max, stats.disk_bytes)
            tick()
            if index + 1 not in checkpoints:
                continue
            key = _key(checkpoints[index + 1])
            span_end = max(seconds, session.chunks[0].index * seconds)  # where the window starts
            modes: dict[str, Any] = {
                "auto": "auto",
                "span": SpanRecall(max(0.0, span_end - SPAN_MINUTES * 60), span_end),
                "recent": "recent",
            }
            for mode, spec in modes.items():
                best, tokens = _best_of(session, memory.recall, spec, params, reps)
                latency[mode][key] = best
                if mode in recalled:
                    recalled[mode][key] = tokens
            latency["reprefill"][key] = _reprefill(backbone, settings, pool, index + 1, params)
            tick()
        final = memory.stats()
    finally:
        manager.close_all()
        shutil.rmtree(root, ignore_errors=True)
    half = device_bytes[len(device_bytes) // 2 :]
    bytes_per_token = session.cache_bytes / session.cache_tokens
    to_7b = kv_bytes_per_token(QWEN25_OMNI_7B) / bytes_per_token
    last = _key(max(minutes))
    return {
        "stream_minutes": total * seconds / 60,
        "chunks": total,
        "chunk_tokens": chunk_tokens,
        "synthesized": f"{POOL} random chunks cycled, {chunk_tokens} tokens each (video grid "
        f"{VIDEO_GRID}, {AUDIO_TOKENS} audio), appended without encoders",
        "token_budget": settings.session.token_budget,
        "prefix_tokens": session.prefix_length,
        "recall_tokens": memory_settings.recall_tokens,
        "span_tokens": memory_settings.span_tokens,
        "host_limit_bytes": memory_settings.host_bytes,
        "span_minutes": SPAN_MINUTES,
        "rebases": session.stats.rebases,
        "chunks_offloaded": final.chunks_offloaded,
        "chunks_held": final.chunks_held,
        "kv_bytes_per_token": bytes_per_token,
        "device_kv_bytes_max": max(device_bytes),
        # (max - min) / max of the device cache over the stream's second half: 0 is flat
        "device_kv_second_half_spread": (max(half) - min(half)) / max(half),
        "host_bytes": final.host_bytes,
        "disk_bytes": final.disk_bytes,
        "host_bytes_max": host_max,
        "disk_bytes_max": disk_max,
        "at_7b_bf16": {
            "kv_bytes_per_token": kv_bytes_per_token(QWEN25_OMNI_7B),
            "device_kv_bytes_max": max(device_bytes) * to_7b,
            "host_bytes": final.host_bytes * to_7b,
            "disk_bytes": final.disk_bytes * to_7b,
        },
        "latency_s": latency,
        "recalled_tokens": recalled,
        "auto_over_recent_at_end": _ratio(latency["auto"][last], latency["recent"][last]),
        "reprefill_over_auto_at_end": _ratio(latency["reprefill"][last], latency["auto"][last]),
    }


def _synthesized_chunks(backbone: Backbone, count: int) -> list[EncodedChunk]:
    gen = torch.Generator().manual_seed(0)
    width = backbone.hidden_size

    def embeds(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, width, generator=gen) * 0.05).to(backbone.device, backbone.dtype)

    return [EncodedChunk(video=embeds(*VIDEO_GRID), audio=embeds(AUDIO_TOKENS)) for _ in range(count)]


def _best_of(
    session: StreamSession, recall_for: Any, spec: Any, params: SamplingParams, reps: int
) -> tuple[float, int]:
    """The best total time of `reps` answers (recall included), and the tokens recalled."""
    best, tokens = float("inf"), 0
    for _ in range(reps):
        recall = recall_for(spec)
        best = min(best, _answer_s(session, params, recall))
        tokens = recall.tokens
    return best, tokens


def _answer_s(session: StreamSession, params: SamplingParams, recall: Recall | None) -> float:
    started = time.perf_counter()
    return timed_answer(session, QUESTION, params, started, recall).total_s


def _reprefill(
    backbone: Backbone, settings: Settings, pool: list[EncodedChunk], chunks: int, params: SamplingParams
) -> float:
    """A fresh session holding every chunk so far (no budget, positions unbounded), prefilled
    chunk by chunk, then the question: the whole-stream answer without memory."""
    unbounded = settings.session.model_copy(update={"token_budget": 2**62, "position_limit": 2**40})
    started = time.perf_counter()
    session = StreamSession(backbone, unbounded, settings.model.system_prompt)
    for index in range(chunks):
        session.append_chunk(pool[index % POOL], index=index)
    return timed_answer(session, QUESTION, params, started).total_s


def _key(minutes: float) -> str:
    return f"{minutes:g}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b
