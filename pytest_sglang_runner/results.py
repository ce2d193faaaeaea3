"""The result types every side returns (a leaf: imports nothing of the kit).

One `Generation` type for the runner, the HF reference, the Engine and the server, so
`compare.assert_logprobs_close(ours, theirs)` compares any two of them; `check_arguments` is the
argument check they share, and `Sampling` the checked sampling parameters of `generate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there (prompt) or chosen (output), its logprob, and the top-k."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)  # token id -> logprob, best first


@dataclass
class Generation:
    """One prompt's continuation (greedy unless sampled with a temperature).

    ``prompt_logprobs[i]`` is the logprob of prompt token ``i`` given the tokens before it (and the
    top-k there); the first is None. ``output_logprobs[j]`` belongs to ``output_ids[j]``. Both are
    None when generated with ``top_logprobs=None``.
    """

    prompt_ids: list[int]
    output_ids: list[int]
    text: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    output_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" (EOS or a stop token) or "length" (max_new_tokens)
    decode_steps: int = 0  # forwards after the prompt's
    graph_steps: int = 0  # of those, how many replayed a captured CUDA graph


def check_arguments(max_new_tokens: int, top_logprobs: int | None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a whole number >= 1")
    if top_logprobs is not None and (not isinstance(top_logprobs, int) or top_logprobs < 0):
        raise ValueError(f"top_logprobs={top_logprobs!r}: expected a whole number >= 0, or None for no logprobs")


_INT64 = (-(2**63), 2**63 - 1)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Sampling:
    """How `generate` picks each token: SGLang's sampling parameters, checked on construction.

    The ranges are those SGLang's ``SamplingParams.verify`` enforces, so a bad value is a
    ValueError naming the argument before anything runs. ``temperature=0`` is greedy (as SGLang
    makes it: top-k 1); ``top_k=-1`` keeps the whole vocabulary; ``seed=None`` leaves torch's
    random state as it is.
    """

    temperature: float = 0.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        ranges = {
            "temperature": (_number(self.temperature) and self.temperature >= 0, "a finite number >= 0 (0: greedy)"),
            "top_k": (_whole(self.top_k) and (self.top_k == -1 or self.top_k >= 1), "-1 (whole vocabulary) or >= 1"),
            "top_p": (_number(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
            "min_p": (_number(self.min_p) and 0 <= self.min_p <= 1, "a number in [0, 1]"),
            "repetition_penalty": (
                _number(self.repetition_penalty) and 0 < self.repetition_penalty <= 2,
                "a number in (0, 2] (1: none)",
            ),
            "frequency_penalty": (
                _number(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
                "a number in [-2, 2]",
            ),
            "presence_penalty": (
                _number(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
                "a number in [-2, 2]",
            ),
            "seed": (
                self.seed is None or (_whole(self.seed) and _INT64[0] <= self.seed <= _INT64[1]),
                "None or a whole number in the int64 range",
            ),
        }
        for name, (valid, expected) in ranges.items():
            if not valid:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected {expected}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
