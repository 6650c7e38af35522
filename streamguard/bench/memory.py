"""Figure 5: a stream's KV cache per stream-minute, full vs pruned, flat under the rolling budget;
the process's resident memory over the same replay."""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from streamguard.bench.flops import QWEN25_OMNI_7B, kv_bytes_per_token
from streamguard.engine.session import SessionStats, StreamSession

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class MemorySample:
    stream_s: float  # stream time at the end of the chunk just appended
    kv_tokens: int
    kv_bytes: int
    rss_bytes: int


def rss_bytes() -> int:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sample_memory(stream_s: float, session: StreamSession) -> MemorySample:
    return MemorySample(stream_s, session.cache_tokens, session.cache_bytes, rss_bytes())


def summarize_memory(
    samples: Sequence[MemorySample],
    session_stats: SessionStats,
    prefix_tokens: int,
    token_budget: int,
    seconds_per_chunk: float,
) -> dict[str, Any]:
    """Growth without a budget, and how flat the cache stays under it over the replay's second half.

    Per stream-minute: every token the stream kept (video after pruning, all audio) at the cache's
    bytes per token, i.e. what the cache would grow by with no rolling budget; also at
    Qwen2.5-Omni-7B's bf16 bytes per token, for scale.
    """
    last = samples[-1]
    minutes = len(samples) * seconds_per_chunk / 60
    kept_tokens = session_stats.video_tokens_kept + session_stats.audio_tokens
    bytes_per_token = last.kv_bytes / last.kv_tokens if last.kv_tokens else 0.0
    second_half = samples[len(samples) // 2 :]
    kv_half = [s.kv_bytes for s in second_half]
    rss_half = [s.rss_bytes for s in second_half]
    return {
        "stream_minutes": minutes,
        "kv_tokens_per_minute": kept_tokens / minutes,
        "kv_bytes_per_minute": kept_tokens * bytes_per_token / minutes,
        "kv_bytes_per_token": bytes_per_token,
        "kv_bytes_per_minute_at_7b_bf16": kept_tokens * kv_bytes_per_token(QWEN25_OMNI_7B) / minutes,
        "token_budget": token_budget,
        "prefix_tokens": prefix_tokens,
        # the most the cache may hold: the prompt prefix and a full budget of chunks
        "kv_bytes_ceiling": (prefix_tokens + token_budget) * bytes_per_token,
        "kv_tokens_max": max(s.kv_tokens for s in samples),
        "kv_bytes_max": max(s.kv_bytes for s in samples),
        "kv_bytes_last": last.kv_bytes,
        # (max - min) / max of the cache over the second half: 0 is perfectly flat
        "kv_second_half_spread": (max(kv_half) - min(kv_half)) / max(kv_half) if max(kv_half) else 0.0,
        "chunks_evicted": session_stats.chunks_evicted,
        "rss_bytes_start": samples[0].rss_bytes,
        "rss_bytes_peak": max(s.rss_bytes for s in samples),
        "rss_bytes_last": last.rss_bytes,
        "rss_second_half_growth_bytes": rss_half[-1] - rss_half[0],
    }


def samples_as_columns(samples: Sequence[MemorySample]) -> dict[str, list[float]]:
    """The samples as one list per field, for the JSON."""
    rows = [asdict(s) for s in samples]
    return {name: [row[name] for row in rows] for name in rows[0]} if rows else {}
