"""Generation on the runner, into the result type it shares with the HF reference.

`generate` runs prompts of any lengths as one extend batch and then decode steps through
``ModelRunner.forward`` (the scheduler's own preparation, `sglang_compat.decoding.DecodeBatch`),
picks each token with SGLang's sampler (greedy by default), stops each sequence at its EOS, a stop
token or ``max_new_tokens``, gives every KV slot back, and returns one `Generation` per prompt.
`reference.HFRunner.generate` returns the same type from transformers, so
`compare.assert_logprobs_close(ours, theirs)` compares the two.
"""

from __future__ import annotations

from typing import Sequence

from ..results import Generation, Sampling, TokenLogprob, check_arguments
from ..sglang_compat import batches, decoding
from ..sglang_compat.batches import GREEDY
from . import limits


def check_request(runner, token_lists: Sequence[Sequence[int]], max_new_tokens: int, top_logprobs: int | None) -> None:
    """Bad arguments, or a batch past the runner's limits (`limits.check_batch`), as a ValueError
    before anything runs (the sampling parameters check themselves: `results.Sampling`)."""
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
    sampling: Sampling = GREEDY,
) -> list[Generation]:
    """Continuations of ``token_lists`` on ``runner`` (KV pool empty before and after), picked as
    ``sampling`` says (greedy by default); the same seed gives the same tokens on the same device."""
    check_request(runner, token_lists, max_new_tokens, top_logprobs)
    results = [Generation(prompt_ids=list(ids), output_ids=[]) for ids in token_lists]
    if top_logprobs is not None:
        for result in results:
            result.output_logprobs = []
    try:
        with decoding.seeded(runner.device, sampling.seed):
            batch = decoding.DecodeBatch(
                runner,
                token_lists,
                max_new_tokens=max_new_tokens,
                top_logprobs=top_logprobs,
                stop_token_ids=stop_token_ids,
                ignore_eos=ignore_eos,
                sampling=sampling,
            )
            _record_steps(batch, results)
    finally:
        batches.free_kv(runner)
    for row, result in enumerate(results):
        result.output_ids = batch.output_ids(row)
        result.finish_reason = batch.finish_reason(row)
        if result.output_logprobs is not None:
            del result.output_logprobs[len(result.output_ids) :]
    return results


def _record_steps(batch: decoding.DecodeBatch, results: list[Generation]) -> None:
    """Run ``batch`` to the end, then keep each step's logprobs (read back all at once) and graph use in ``results``."""
    steps = []
    while not batch.done:
        steps.append(batch.step())
    decoding.read_logprobs(steps)
    for number, step in enumerate(steps):
        for k, row in enumerate(step.rows):
            result = results[row]
            if step.prompt_logprobs is not None:
                result.prompt_logprobs = [None] + [
                    TokenLogprob(result.prompt_ids[i + 1], logprob, top)
                    for i, (logprob, top) in enumerate(step.prompt_logprobs[k])
                ]
            if step.logprobs is not None:
                top = step.top_logprobs[k] if step.top_logprobs is not None else {}
                result.output_logprobs.append(TokenLogprob(step.token_ids[k], step.logprobs[k], top))
            if number:
                result.decode_steps += 1
                result.graph_steps += step.graph
