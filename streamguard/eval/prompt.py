"""The multiple-choice question put to the stream, and how its answer is read off the logits.

The paper gives no prompt of its own; this is the instruction the benchmarks' Qwen2.5-Omni
evaluations use (Video-MME, WorldSense, OmniVideoBench): the options lettered, one per line,
and a request for the letter alone. The model's choice is the option letter with the highest
next-token logit at the start of the answer, so no free text has to be parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from streamguard.backbones.base import Backbone
from streamguard.eval.datasets import LETTERS, EvalItem

INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and its audio."
)
ANSWER_FORMAT = "Answer with the option's letter from the given choices directly."


def question_prompt(item: EvalItem) -> str:
    """The instruction, the question, the lettered options and the answer format, one per line."""
    options = [f"{letter}. {text}" for letter, text in zip(LETTERS, item.options, strict=False)]
    return "\n".join([INSTRUCTION, item.question, *options, ANSWER_FORMAT])


def letter_token_ids(backbone: Backbone, count: int) -> list[int]:
    """The token of each of the first `count` letters, as the answer's first token."""
    ids = []
    for letter in LETTERS[:count]:
        tokens = backbone.tokenize(letter)
        if len(tokens) != 1:
            raise ValueError(f"the tokenizer splits the option letter {letter!r} into {len(tokens)} tokens")
        ids.append(tokens[0])
    return ids


@dataclass(frozen=True)
class Choice:
    """The option the model prefers and the probability it gives each option letter."""

    index: int
    probs: tuple[float, ...]  # softmax over the option letters' logits

    @property
    def letter(self) -> str:
        return LETTERS[self.index]


def choose(logits: torch.Tensor, letter_ids: Sequence[int]) -> Choice:
    """Read the choice off (V,) next-token logits, restricted to the option letters."""
    scores = logits.detach().double().cpu()[list(letter_ids)]
    probs = torch.softmax(scores, dim=-1)
    return Choice(int(torch.argmax(scores)), tuple(float(p) for p in probs))
