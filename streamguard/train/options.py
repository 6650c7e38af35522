"""What an A2V training run is configured with (no torch import: the CLI reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainOptions:
    """Training hyperparameters; the paper's values where App. A.1 gives them.

    The paper gives λ_cos = 5, τ = 0.07, 128 queries and 2 cross-attention layers, and trains with
    "a batch size of 8 with gradient accumulation over 2 steps on 4 GPUs" (10k–15k steps); it does
    not say whether 8 counts videos or chunks, and accumulation adds no contrastive negatives.
    Here a batch is `batch_size` chunks drawn from every training video, all of them negatives of
    one another across videos; the paper states no learning rate, weight decay or epoch count, so
    those are common AdamW choices.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    val_fraction: float = 0.1
    seed: int = 0
    num_queries: int = 128
    num_layers: int = 2
    num_heads: int = 8
    lambda_cos: float = 5.0
    tau: float = 0.07
    # A checkpoint is written at the end of every epoch and, when set, every this many steps.
    checkpoint_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_queries", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise ValueError(f"checkpoint_steps must be at least 1, got {self.checkpoint_steps}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.lr <= 0 or self.weight_decay < 0 or self.tau <= 0 or self.lambda_cos < 0:
            raise ValueError(f"lr and tau must be positive, weight_decay and lambda_cos not negative: {self}")
