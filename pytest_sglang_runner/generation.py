"""Greedy generation on the runner, and the result type it shares with the HF reference.

`generate` runs prompts of any lengths as one extend batch and then decode steps through
``ModelRunner.forward`` (the scheduler's own preparation, `sglang_compat.GreedyBatch`), stops each
sequence at its EOS, a stop token or ``max_new_tokens``, gives every KV slot back, and returns one
`Generation` per prompt. `reference.HFRunner.generate` returns the same type from transformers,
so `compare.assert_logprobs_close(ours, theirs)` compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from . import limits, sglang_compat


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


def check_request(runner, token_lists: Sequence[Sequence[int]], max_new_tokens: int, top_logprobs: int | None) -> None:
    """Bad arguments, or a batch past the runner's limits (`limits.check_batch`), as a ValueError before anything runs."""
    check_arguments(max_new_tokens, top_logprobs)
    limits.check_batch(runner, token_lists, max_new_tokens)


def generate(
    runner,
    token_lists: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 16,
    top_logprobs: int | None = 5,
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
) -> list[Generation]:
    """Greedy continuations of ``token_lists`` on ``runner`` (KV pool empty before and after)."""
    check_request(runner, token_lists, max_new_tokens, top_logprobs)
    results = [Generation(prompt_ids=list(ids), output_ids=[]) for ids in token_lists]
    if top_logprobs is not None:
        for result in results:
            result.output_logprobs = []
    try:
        batch = sglang_compat.GreedyBatch(
            runner, token_lists, max_new_tokens=max_new_tokens, top_logprobs=top_logprobs, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos
        )
        prompt_step = True
        while not batch.done:
            step = batch.step()
            for k, row in enumerate(step.rows):
                result = results[row]
                if step.prompt_logprobs is not None:
                    result.prompt_logprobs = [None] + [
                        TokenLogprob(result.prompt_ids[i + 1], logprob, top) for i, (logprob, top) in enumerate(step.prompt_logprobs[k])
                    ]
                if step.logprobs is not None:
                    top = step.top_logprobs[k] if step.top_logprobs is not None else {}
                    result.output_logprobs.append(TokenLogprob(step.token_ids[k], step.logprobs[k], top))
                if not prompt_step:
                    result.decode_steps += 1
                    result.graph_steps += step.graph
            prompt_step = False
    finally:
        sglang_compat.free_kv(runner)
    for row, result in enumerate(results):
        result.output_ids = batch.output_ids(row)
        result.finish_reason = batch.finish_reason(row)
        if result.output_logprobs is not None:
            del result.output_logprobs[len(result.output_ids) :]
    return results
