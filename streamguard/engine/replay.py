"""What a replayed stream amounts to, shared by `replay`, `bench` and `eval`.

- `summarize_replay`: the compression, cache size and speed of a finished replay;
- `append_offline_plan`: lay an offline ContextGuard plan (§2.3: segments, merged groups) into a
  session, so offline merging is measured through the same cache as the online methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from streamguard.backbones.base import EncodedChunk
from streamguard.engine.pipeline import ChunkReport
from streamguard.engine.session import StreamSession
from streamguard.pruning.temporal import OfflinePlan


def summarize_replay(
    reports: Sequence[ChunkReport], session: StreamSession, elapsed: float, seconds_per_chunk: float
) -> dict[str, float | int]:
    """Tokens in and kept, the share pruned, the cache and the real-time factor of a replay."""
    video_in = sum(r.video_tokens_in for r in reports)
    tokens_in = sum(r.tokens_in for r in reports)
    # Held tokens come from the session: the `previous` policy evicts video after its report.
    video_kept = session.stats.video_tokens_kept
    tokens_kept = video_kept + session.stats.audio_tokens
    return {
        "chunks": len(reports),
        "video_tokens_in": video_in,
        "video_tokens_kept": video_kept,
        "input_tokens": tokens_in,
        "input_tokens_kept": tokens_kept,
        "video_tokens_pruned_pct": pruned_pct(video_kept, video_in),
        "input_tokens_pruned_pct": pruned_pct(tokens_kept, tokens_in),
        "chunks_video_dropped": sum(r.video_dropped or r.previous_video_evicted for r in reports),
        "chunks_encoder_skipped": sum(r.encoder_skipped for r in reports),
        "kv_tokens": session.cache_tokens,
        "kv_bytes": session.cache_bytes,
        "real_time_factor": elapsed / (len(reports) * seconds_per_chunk) if reports else 0.0,
    }


def pruned_pct(kept: int, total: int) -> float:
    """How much of `total` was pruned, in percent (0 for nothing to prune)."""
    return 100.0 * (1 - kept / total) if total else 0.0


def append_offline_plan(session: StreamSession, encoded: Sequence[EncodedChunk], plan: OfflinePlan) -> None:
    """Append a whole video planned by `offline_contextguard`: each merged group's averaged tokens
    at its first chunk's positions (the later chunks of the group add no video), every chunk's audio.
    A merged token's deepstack features (Qwen3-Omni) are the group's average at its index too.
    """
    first_of_group = {group.chunks[0]: group for group in plan.groups}
    for t, chunk in enumerate(encoded):
        group = first_of_group.get(t)
        if group is None or chunk.video is None:
            session.append_chunk(chunk, drop_video=True)
            continue
        flat = chunk.video_flat.clone()
        flat[group.indices] = group.video.to(flat)
        deepstack = chunk.deepstack
        if deepstack is not None:
            members = torch.stack([encoded[c].deepstack_flat[:, group.indices] for c in group.chunks])
            layers = chunk.deepstack_flat.clone()
            layers[:, group.indices] = members.float().mean(dim=0).to(layers)
            deepstack = layers.reshape(deepstack.shape)
        merged = EncodedChunk(video=flat.reshape(chunk.video.shape), audio=chunk.audio, deepstack=deepstack)
        session.append_chunk(merged, keep=group.indices)
