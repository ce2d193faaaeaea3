"""The result types every side returns (a leaf: imports nothing of the kit).

One `Generation` type for the runner, the HF reference, the Engine and the server, so
`compare.assert_logprobs_close(ours, theirs)` compares any two of them; `check_arguments` is the
argument check they share.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there (prompt) or chosen (output), its logprob, and the top-k."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)  # token id -> logprob, best first


@dataclass
class Generation:
    """One prompt's greedy continuation.

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
