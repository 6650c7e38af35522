"""Figure 7: first-token KL divergence of a pruned session against the full-token one (App. B.1)."""

from __future__ import annotations

from statistics import fmean

from streamguard.engine.fidelity import question_kl
from streamguard.engine.session import StreamSession

# Questions of different kinds, so the figure is not one prompt's accident.
QUESTIONS = [
    "What is happening in the video?",
    "What sound can you hear?",
    "Describe the colours and shapes you see.",
]


def mean_kl(full: StreamSession, pruned: StreamSession, questions: list[str]) -> float:
    """KL(full ‖ pruned) of the first answer token, averaged over `questions`."""
    return fmean(question_kl(full, pruned, question) for question in questions)
