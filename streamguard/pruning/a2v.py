"""Audio-to-video (A2V) semantic predictor (paper §2.2, App. A.1), its checkpoint IO and losses.

The predictor maps a chunk's audio tokens (already in the LLM embedding space) to Q query outputs
in that same space; their mean is the chunk's audio-predicted visual semantics ĥ_t, the reference
the semantic branch scores video tokens against.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger("streamguard.pruning")

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "a2v_config.json"
_FORMAT = "streamguard-a2v/1"


@dataclass(frozen=True)
class A2VConfig:
    """Predictor shape; the paper's default is 128 queries and 2 cross-attention layers (App. A.1)."""

    dim: int  # the LLM hidden size: audio tokens come in and predictions go out at this width
    num_queries: int = 128
    num_layers: int = 2
    num_heads: int = 8
    mlp_ratio: float = 2.0  # kept small: the paper stresses a lightweight predictor
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.num_queries <= 0 or self.num_layers <= 0 or self.num_heads <= 0:
            raise ValueError(f"A2VConfig sizes must be positive: {self}")
        if self.dim % self.num_heads:
            raise ValueError(f"A2VConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}")


class _CrossAttentionBlock(nn.Module):
    """Pre-norm residual block: queries attend over audio tokens, then a feed-forward."""

    def __init__(self, config: A2VConfig) -> None:
        super().__init__()
        hidden = round(config.dim * config.mlp_ratio)
        self.norm_q = nn.LayerNorm(config.dim)
        self.norm_kv = nn.LayerNorm(config.dim)
        self.attn = nn.MultiheadAttention(
            config.dim, config.num_heads, dropout=config.dropout, batch_first=True
        )
        self.norm_ff = nn.LayerNorm(config.dim)
        self.ff = nn.Sequential(
            nn.Linear(config.dim, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, config.dim),
        )

    def forward(self, queries: torch.Tensor, audio: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        kv = self.norm_kv(audio)
        attended, _ = self.attn(self.norm_q(queries), kv, kv, key_padding_mask=pad, need_weights=False)
        queries = queries + attended
        return queries + self.ff(self.norm_ff(queries))


class A2VPredictor(nn.Module):
    """Q learnable queries, `num_layers` cross-attention blocks over audio, an MLP head (Eq. 3)."""

    def __init__(self, config: A2VConfig) -> None:
        super().__init__()
        self.config = config
        self.queries = nn.Parameter(torch.randn(config.num_queries, config.dim) * 0.02)
        self.blocks = nn.ModuleList(_CrossAttentionBlock(config) for _ in range(config.num_layers))
        self.head = nn.Sequential(
            nn.LayerNorm(config.dim),
            nn.Linear(config.dim, config.dim),
            nn.GELU(),
            nn.Linear(config.dim, config.dim),
        )

    def forward(self, audio: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d) or (L, d) audio -> (B, Q, d) or (Q, d) query outputs.

        `key_padding_mask` (B, L) or (L,) is True at padded audio positions; every row needs at
        least one real token (attention over nothing is undefined).
        """
        single = audio.dim() == 2
        if single:
            audio = audio.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if audio.dim() != 3 or audio.shape[-1] != self.config.dim:
            raise ValueError(
                f"audio must be (B, L, {self.config.dim}) or (L, {self.config.dim}), got {tuple(audio.shape)}"
            )
        if key_padding_mask is not None and bool(key_padding_mask.all(dim=-1).any()):
            raise ValueError("key_padding_mask masks every audio token of some row")
        out = self.queries.unsqueeze(0).expand(audio.shape[0], -1, -1)
        for block in self.blocks:
            out = block(out, audio, key_padding_mask)
        out = self.head(out)
        return out.squeeze(0) if single else out

    def predict(self, audio: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ĥ_t: the mean over queries, (d,) for one chunk or (B, d) for a batch."""
        return self.forward(audio, key_padding_mask).mean(dim=-2)


class PredictorCheckpointError(ValueError):
    """An A2V checkpoint folder that is incomplete or unreadable."""


class PredictorMismatchError(PredictorCheckpointError):
    """An A2V checkpoint trained for a different backbone or hidden size."""


def backbone_name(model_id: str) -> str:
    # A hub id and a local folder of the same checkpoint share their last path component
    # ("Qwen/Qwen2.5-Omni-7B" vs "/models/Qwen2.5-Omni-7B/").
    return model_id.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()


def save_predictor(model: A2VPredictor, folder: str | Path, backbone_id: str, hidden_size: int) -> Path:
    """Write model.safetensors and a2v_config.json (with the backbone it was trained for) into `folder`."""
    if hidden_size != model.config.dim:
        raise ValueError(f"predictor width {model.config.dim} != backbone hidden size {hidden_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE, metadata={"format": _FORMAT})
    meta = {
        "format": _FORMAT,
        "backbone_id": backbone_id,
        "hidden_size": hidden_size,
        "config": asdict(model.config),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_predictor(
    folder: str | Path,
    expected_backbone_id: str,
    expected_hidden_size: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> A2VPredictor:
    """Load a predictor saved by `save_predictor`, in eval mode, checking it fits this backbone."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"A2V predictor checkpoint {folder} has no {path.name}")
    try:
        meta = json.loads(config_path.read_text())
        backbone_id, hidden_size = str(meta["backbone_id"]), int(meta["hidden_size"])
        config = A2VConfig(**meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PredictorCheckpointError(f"unreadable {config_path}: {exc}") from exc
    if (
        backbone_name(backbone_id) != backbone_name(expected_backbone_id)
        or hidden_size != expected_hidden_size
    ):
        raise PredictorMismatchError(
            f"A2V predictor in {folder} was trained for backbone {backbone_id!r} (hidden size {hidden_size}), "
            f"but the loaded backbone is {expected_backbone_id!r} (hidden size {expected_hidden_size})"
        )
    if config.dim != hidden_size:
        raise PredictorCheckpointError(f"{config_path}: config dim {config.dim} != hidden_size {hidden_size}")
    try:
        state = load_file(weights_path)
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise PredictorCheckpointError(f"unreadable {weights_path}: {exc}") from exc
    model = A2VPredictor(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PredictorCheckpointError(f"{weights_path} does not match its config: {exc}") from exc
    return model.to(device=device, dtype=dtype).eval()


def mean_audio_reference(audio: torch.Tensor) -> torch.Tensor:
    """The paper's "orig" reference: the mean audio embedding, (L, d) -> (d,) (or (B, L, d) -> (B, d))."""
    return audio.mean(dim=-2)


class SemanticReference:
    """The reference vector for a chunk's semantic scores: ĥ_t from the predictor, else the mean audio.

    Without a predictor the fallback is announced with one warning (on first use) on the
    "streamguard.pruning" logger; `mode` tells stats which reference was used.
    """

    def __init__(self, predictor: A2VPredictor | None = None) -> None:
        self.predictor = predictor
        self._warned = False

    @property
    def mode(self) -> Literal["a2v", "mean_audio"]:
        return "a2v" if self.predictor is not None else "mean_audio"

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """(L, d) audio -> (d,) reference, on the audio's device and dtype."""
        if self.predictor is None:
            if not self._warned:
                logger.warning(
                    "No A2V predictor configured: semantic pruning falls back to the mean audio embedding "
                    "(the paper's weaker 'orig' reference)"
                )
                self._warned = True
            return mean_audio_reference(audio)
        param = next(self.predictor.parameters())
        return self.predictor.predict(audio.to(device=param.device, dtype=param.dtype)).to(audio)


@contextlib.contextmanager
def fallback_warnings_muted() -> Iterator[None]:
    """Silence the fallback warning while a caller that has said it once builds many pipelines
    (each pipeline's reference would repeat it)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def a2v_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    video_ids: torch.Tensor,
    lambda_cos: float = 5.0,
    tau: float = 0.07,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 7–8: (λ_cos·L_cos + L_ctr, L_cos, L_ctr) for pooled predictions/targets (B, T, d).

    For prediction (b, t) the positive is target (b, t); negatives are every target of rows whose
    video id differs, so other chunks of the same video (also in another row) are left out.
    """
    if pred.shape != target.shape or pred.dim() != 3 or video_ids.shape != pred.shape[:1]:
        raise ValueError(
            f"expected pred/target (B, T, d) and video_ids (B,), got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(video_ids.shape)}"
        )
    batch, chunks, _ = pred.shape
    p = F.normalize(pred.reshape(batch * chunks, -1), dim=-1)
    t = F.normalize(target.reshape(batch * chunks, -1), dim=-1)
    sim = p @ t.T  # (N, N): prediction i against target j
    positive = sim.diagonal()
    loss_cos = (1.0 - positive).mean()
    ids = video_ids.to(sim.device).repeat_interleave(chunks)
    allowed = (ids[:, None] != ids[None, :]) | torch.eye(len(ids), dtype=torch.bool, device=sim.device)
    logits = (sim / tau).masked_fill(~allowed, -torch.inf)
    loss_ctr = (torch.logsumexp(logits, dim=-1) - positive / tau).mean()
    return lambda_cos * loss_cos + loss_ctr, loss_cos, loss_ctr
