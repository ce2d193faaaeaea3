"""A batch checked against the runner's limits before it reaches SGLang.

Past a limit SGLang fails deep inside (an ``IndexError`` in the position embedding, an
allocator's out-of-memory with advice meant for a server, a CUDA device assert for a token id
outside the vocabulary, which poisons the process). Here each limit is checked in Python first,
and the error names the limit, the value asked for and the option that raises it.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import BatchLimitError
from ..sglang_compat import batches


def check_batch(runner, token_lists: Sequence[Sequence[int]], new_tokens_per_sequence: int = 0) -> None:
    if not token_lists or any(len(ids) == 0 for ids in token_lists):
        raise BatchLimitError("empty batch or empty sequence: every sequence needs at least one token")
    limits = batches.runner_limits(runner)
    if len(token_lists) > limits.request_slots:
        raise BatchLimitError(
            f"this batch has {len(token_lists)} sequences but the runner has {limits.request_slots} request slots free; "
            f"split the batch, or raise them with --sglang-arg max_running_requests={len(token_lists)}"
        )
    check_token_ids(token_lists, limits.vocab_size)
    longest = max(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    if len(token_lists[longest]) + new_tokens_per_sequence > limits.max_sequence:
        extra = f" + {new_tokens_per_sequence} new" if new_tokens_per_sequence else ""
        raise BatchLimitError(
            f"sequence {longest} has {len(token_lists[longest])} tokens{extra}, but this model takes at most "
            f"{limits.max_sequence} (its position embeddings); shorten it"
        )
    needed = sum(len(ids) for ids in token_lists) + len(token_lists) * new_tokens_per_sequence
    if needed > limits.kv_slots:
        what = "prompts + max_new_tokens each" if new_tokens_per_sequence else "one per token"
        raise BatchLimitError(
            f"this batch needs up to {needed} KV slots ({what}) but the pool has {limits.kv_slots}; "
            f"use fewer or shorter sequences, or a larger pool (--sglang-max-total-tokens {needed})"
        )


def check_token_ids(token_lists: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Every id in ``[0, vocab_size)``: cheap (min/max in C), so it runs on every batch."""
    low, high = min(map(min, token_lists)), max(map(max, token_lists))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        where = next(i for i, ids in enumerate(token_lists) if bad in ids)
        raise BatchLimitError(f"sequence {where} has token id {bad}, outside this model's vocabulary [0, {vocab_size})")
