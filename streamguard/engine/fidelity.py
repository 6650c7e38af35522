"""First-token KL divergence (paper App. B.1): how far pruning moves the model's answer.

The full-token session is the reference P, the pruned one Q; both answer the same question and
the distributions of their first answer token are compared, KL(P ‖ Q) in nats.
"""

from __future__ import annotations

import torch

from streamguard.engine.session import StreamSession


def first_token_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(softmax(reference) ‖ softmax(logits)) over the vocabulary of two (V,) logit vectors."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"logits of shapes {tuple(reference_logits.shape)} and {tuple(logits.shape)}")
    p_log = torch.log_softmax(reference_logits.double().cpu(), dim=-1)
    q_log = torch.log_softmax(logits.double().cpu(), dim=-1)
    return float(torch.sum(p_log.exp() * (p_log - q_log)))


def question_kl(reference: StreamSession, session: StreamSession, question: str) -> float:
    """First-token KL between two sessions' answers to `question`; both caches are left as they were."""
    return first_token_kl(reference.question_logits(question)[-1], session.question_logits(question)[-1])
