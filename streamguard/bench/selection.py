"""Figure 3: what ContextGuard's per-chunk selection costs at Qwen2.5-Omni-7B's width.

Random (F=2, H, W, 3584) video and (50, 3584) audio tensors go through the real `Pruner.plan`
(reference, semantic + spatial selection, drop rule), once with a default-size A2V predictor
(random weights: its cost, not its accuracy, is measured) and once with the mean-audio reference.
Next to it, the cost of encoding and prefilling the same chunk on a 7B, estimated two ways on this
device: the loaded thinker's measured encode + prefill scaled by the FLOP ratio of the 7B to it
(see `flops`), and the 7B's FLOPs at the device's measured dense-matmul throughput. The second is
the faster 7B, so the larger selection share of the two.
"""

from __future__ import annotations

import time
from statistics import median
from typing import Any

import torch

from streamguard.backbones.base import Backbone, ChunkInputs, EncodedChunk
from streamguard.backbones.qwen_omni import QwenOmniBackbone
from streamguard.bench.flops import MEL_FRAMES_PER_CHUNK, QWEN25_OMNI_7B, ThinkerDims, chunk_flops
from streamguard.bench.workload import Tick, distribution_ms
from streamguard.config import Settings
from streamguard.engine.session import StreamSession
from streamguard.pruning.a2v import A2VConfig, A2VPredictor, SemanticReference
from streamguard.pruning.pruner import Pruner

# Merged-token grids per temporal patch, from a small frame to Qwen2.5-Omni's larger ones.
GRIDS: tuple[tuple[int, int], ...] = ((16, 16), (24, 32))
TEMPORAL_PATCHES = 2
AUDIO_TOKENS = 50
REFERENCES = (("a2v", "contextguard"), ("mean_audio", "mean_audio"))


def steps(grids: tuple[tuple[int, int], ...]) -> int:
    return len(grids) * (len(REFERENCES) + 1)


def measure_selection(
    backbone: Backbone, settings: Settings, grids: tuple[tuple[int, int], ...], reps: int, tick: Tick
) -> dict[str, Any]:
    target = QWEN25_OMNI_7B
    device, dtype = backbone.device, backbone.dtype
    generator = torch.Generator().manual_seed(0)
    predictor = A2VPredictor(A2VConfig(dim=target.hidden)).to(device=device, dtype=dtype).eval()
    # The FLOP-scaled estimate needs the loaded model to be a Qwen2.5-Omni thinker as well.
    loaded = (
        ThinkerDims.from_config(backbone.model.config) if isinstance(backbone, QwenOmniBackbone) else None
    )
    throughput = matmul_throughput(target.hidden, device, dtype)
    rows = []
    for height, width in grids:
        grid = (TEMPORAL_PATCHES, height, width)
        chunk = EncodedChunk(
            video=torch.randn(*grid, target.hidden, generator=generator).to(device, dtype),
            audio=torch.randn(AUDIO_TOKENS, target.hidden, generator=generator).to(device, dtype),
        )
        row, keep = _selection_row(backbone, settings, chunk, predictor, reps, tick)
        cached = _prefix_tokens(backbone, settings)
        flops_target = chunk_flops(target, grid, row["kept_video_tokens"], AUDIO_TOKENS, cached)
        at_throughput_ms = 1000 * flops_target["total"] / throughput
        selection_ms = row["a2v"]["median_ms"]
        row |= {
            "flops_7b": flops_target,
            "encode_prefill_7b_ms_at_matmul_throughput": at_throughput_ms,
            "selection_share_pct_at_matmul_throughput": share_pct(selection_ms, at_throughput_ms),
            "loaded_model_ms": None,
            "flops_loaded": None,
            "encode_prefill_7b_ms_scaled": None,
            "selection_share_pct_scaled": None,
        }
        if loaded is not None:
            measured = loaded_chunk_cost(backbone, settings, grid, keep, reps)
            flops_loaded = chunk_flops(loaded, grid, row["kept_video_tokens"], AUDIO_TOKENS, cached)
            scaled_ms = measured["encode_prefill_ms"] * flops_target["total"] / flops_loaded["total"]
            row |= {
                "loaded_model_ms": measured,
                "flops_loaded": flops_loaded,
                "encode_prefill_7b_ms_scaled": scaled_ms,
                "selection_share_pct_scaled": share_pct(selection_ms, scaled_ms),
            }
        rows.append(row)
        tick()
    return {
        "width": target.hidden,
        "audio_tokens": AUDIO_TOKENS,
        "a2v_predictor": {"queries": predictor.config.num_queries, "layers": predictor.config.num_layers},
        "dims_7b": target.as_dict(),
        "dims_loaded": None if loaded is None else loaded.as_dict(),
        "matmul_tflops": throughput / 1e12,
        "rows": rows,
    }


def _selection_row(
    backbone: Backbone,
    settings: Settings,
    chunk: EncodedChunk,
    predictor: A2VPredictor,
    reps: int,
    tick: Tick,
) -> tuple[dict[str, Any], torch.Tensor]:
    """`Pruner.plan` timed with each reference on `chunk`, and the video tokens it keeps."""
    row: dict[str, Any] = {"grid": list(chunk.video.shape[:3]), "video_tokens": chunk.num_video_tokens}
    keep: torch.Tensor | None = None
    for mode, method in REFERENCES:
        pruning = settings.pruning.model_copy(update={"method": method, "predictor_path": None})
        pruner = Pruner(pruning, backbone)
        pruner.reference = SemanticReference(predictor if mode == "a2v" else None)
        decisions = [pruner.plan(chunk, rep) for rep in range(reps + 1)][1:]  # the first call warms up
        row[mode] = distribution_ms([d.select_ms / 1000 for d in decisions])
        keep = keep if keep is not None else decisions[0].keep
        tick()
    row["kept_video_tokens"] = int(keep.numel())
    return row, keep


def _prefix_tokens(backbone: Backbone, settings: Settings) -> int:
    """Tokens cached before a stream's first chunk: the prompt prefix."""
    return len(backbone.prompt_layout(settings.model.system_prompt).prefix)


def share_pct(selection_ms: float, other_ms: float) -> float:
    """Selection's percentage of a chunk's compute when the rest of it takes `other_ms`."""
    return 100 * selection_ms / (selection_ms + other_ms)


def loaded_chunk_cost(
    backbone: QwenOmniBackbone, settings: Settings, grid: tuple[int, int, int], keep: torch.Tensor, reps: int
) -> dict[str, float]:
    """Median ms of the loaded thinker encoding a random chunk of `grid` and prefilling `keep` of its
    video tokens with its audio, after the prompt prefix."""
    config = backbone.model.config
    vision = config.vision_config
    frames, height, width = grid
    patches = frames * height * width * 4
    generator = torch.Generator().manual_seed(1)
    inputs = ChunkInputs(
        pixel_values_videos=torch.randn(
            patches,
            vision.in_channels * vision.temporal_patch_size * vision.patch_size**2,
            generator=generator,
        ),
        video_grid_thw=torch.tensor([[frames, height * 2, width * 2]]),
        input_features=torch.randn(
            config.audio_config.num_mel_bins, MEL_FRAMES_PER_CHUNK, generator=generator
        ),
    )
    encode, prefill = [], []
    for _ in range(reps + 1):
        session = StreamSession(backbone, settings.session, settings.model.system_prompt)
        started = time.perf_counter()
        encoded = backbone.encode(inputs)
        _synchronize(backbone.device)
        encoded_at = time.perf_counter()
        session.append_chunk(encoded, keep=keep.cpu())
        _synchronize(backbone.device)
        encode.append(encoded_at - started)
        prefill.append(time.perf_counter() - encoded_at)
    encode_ms, prefill_ms = 1000 * median(encode[1:]), 1000 * median(prefill[1:])
    return {"encode_ms": encode_ms, "prefill_ms": prefill_ms, "encode_prefill_ms": encode_ms + prefill_ms}


def matmul_throughput(width: int, device: torch.device, dtype: torch.dtype, tokens: int = 512) -> float:
    """FLOP/s of a (tokens × width) @ (width × width) product here: a 7B layer's shape."""
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(tokens, width, generator=generator).to(device, dtype)
    b = torch.randn(width, width, generator=generator).to(device, dtype)
    times = []
    for _ in range(4):
        started = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return 2 * tokens * width * width / median(times[1:])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
