"""Batch invariance: does a prompt's output change when other prompts share its batch? (issue #23)

As in vLLM's determinism suite: run a needle prompt alone, then inside batches of other prompts
(drawn with a seed, at chosen rows), and compare each run's needle output with the alone run,
bitwise (tokens, logprobs or logits bit-identical) or by the kit's rules (`compare`). A kernel
whose reduction order follows the batch shape (a GEMM that tiles by row count, split-KV attention)
breaks bitwise invariance while every token stays the same; the report gives, per batch size and
row, whether the output was identical, the largest difference and the first token that changed.

Every batch is checked against the runner's limits (`runner.limits`) before anything runs.
Imports no SGLang at import time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from .compare import Mismatch, first_divergence, logprob_mismatches
from .errors import BatchLimitError
from .results import Generation, TokenLogprob
from .runner.limits import check_batch

POSITIONS = ("first", "middle", "last")
RANDOM_PROMPT_LENGTHS = (4, 64)  # token counts of the random prompts `others=N` asks for
NAMES = ("batch", "alone")  # the two sides, as the rules' failure tables name them


@dataclass(frozen=True)
class InvarianceCase:
    """The needle at one row of one batch, against the needle alone."""

    batch_size: int
    row: int
    label: str  # the position as asked: "first", "middle", "last" or the row
    identical: bool  # bit for bit: tokens, and logprobs or logits
    max_abs_difference: float  # logprobs (generate) or logits, where both sides have them
    first_divergence: int | None  # the first output token that differs (generate), else None
    passed: bool  # under the comparison asked for
    mismatches: tuple[Mismatch, ...] = ()  # the rules' failures (compare=rules)


@dataclass
class InvarianceReport:
    """Every case of one check; `table()` shows them, `failures` lists those that did not pass."""

    what: str
    compare: str | dict
    alone: Any  # the needle's own output: a `Generation` or its last-token logits
    cases: list[InvarianceCase] = field(default_factory=list)

    @property
    def failures(self) -> list[InvarianceCase]:
        return [case for case in self.cases if not case.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        header = ("batch size", "position", "identical", "max abs difference", "first diverging token", "result")
        rows = [
            (
                str(case.batch_size),
                f"{case.label} (row {case.row})",
                "yes" if case.identical else "no",
                f"{case.max_abs_difference:.3g}",
                "-" if case.first_divergence is None else f"output {case.first_divergence}",
                "ok" if case.passed else _failure(case),
            )
            for case in self.cases
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows])


def _failure(case: InvarianceCase) -> str:
    if not case.mismatches:
        return "FAIL"
    first = case.mismatches[0]
    return f"FAIL: {len(case.mismatches)} rule failure(s), first at {first.position}: {first.detail}"


def check_batch_invariance(
    forward,
    needle,
    others,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    positions: Sequence[str | int] = POSITIONS,
    what: str = "generate",
    max_new_tokens: int = 8,
    top_logprobs: int = 5,
    compare: str | dict = "bitwise",
    seed: int = 0,
) -> InvarianceReport:
    """Run ``needle`` alone, then at each of ``positions`` in a batch of each of ``batch_sizes``.

    ``forward`` is the kit's `Forward` (``sglang_forward``). ``needle`` is a text or a token list;
    ``others`` the prompts that fill the batches (texts or token lists, at least
    ``max(batch_sizes) - 1``, drawn without repeats), or an int N for N random prompts of
    `RANDOM_PROMPT_LENGTHS` tokens from the tokenizer's vocabulary, both drawn with ``seed``.
    ``what="generate"`` compares greedy tokens and logprobs, ``"logits"`` the last-token logits of
    one forward. ``compare="bitwise"`` asks for bit-identical outputs; a dict of
    `compare.logprob_mismatches` keywords (``{}``: the kit's defaults) applies its rules instead.
    A bad argument, or a batch past the runner's limits, is a ValueError before anything runs.
    """
    _check_options(what, compare, batch_sizes, top_logprobs)
    rng = random.Random(seed)
    needle_ids = forward.token_lists([needle])[0]
    pool = _random_prompts(forward, others, rng) if isinstance(others, int) else forward.token_lists(others)
    batches = _batches(needle_ids, pool, batch_sizes, positions, rng)
    new_tokens = max_new_tokens if what == "generate" else 0
    for (size, _, _), token_lists in batches.items():
        try:
            check_batch(forward.runner, token_lists, new_tokens)
        except BatchLimitError as exc:
            raise BatchLimitError(f"batch_sizes: the batch of {size} does not fit this runner: {exc}") from None

    def needle_output(token_lists: list[list[int]], row: int):
        if what == "logits":
            logits = forward(token_lists).next_token_logits
            if logits is None:
                raise ValueError("what='logits' needs a generative model (last-token logits); this one has none")
            return logits[row]
        return forward.generate(token_lists, max_new_tokens=max_new_tokens, top_logprobs=top_logprobs)[row]

    alone = needle_output([needle_ids], 0)
    report = InvarianceReport(what, compare, alone)
    for (size, row, label), token_lists in batches.items():
        in_batch = needle_output(token_lists, row)
        report.cases.append(_compare(size, row, label, in_batch, alone, compare))
    return report


def assert_batch_invariant(forward, needle, others, **options) -> InvarianceReport:
    """`check_batch_invariance`, failing with its table (each failing batch size and position) unless every case passes."""
    __tracebackhide__ = True  # pytest shows the test's call, then the table
    report = check_batch_invariance(forward, needle, others, **options)
    if not report.passed:
        raise AssertionError(
            f"the needle's {report.what} output changed inside a batch ({_compared_how(report.compare)}) in "
            f"{len(report.failures)} of {len(report.cases)} cases:\n{report.table()}"
        )
    return report


def _compared_how(compare: str | dict) -> str:
    if compare == "bitwise":
        return "bit for bit"
    return "by the kit's rules: " + (", ".join(f"{key}={value!r}" for key, value in compare.items()) or "defaults")


def _check_options(what: str, compare: str | dict, batch_sizes: Sequence[int], top_logprobs: int) -> None:
    if what not in ("generate", "logits"):
        raise ValueError(f"what={what!r}: expected 'generate' or 'logits'")
    if compare != "bitwise" and not isinstance(compare, dict):
        raise ValueError(f"compare={compare!r}: expected 'bitwise' or a dict of compare.logprob_mismatches keywords")
    if isinstance(compare, dict) and what == "logits":
        raise ValueError("compare=rules compares logprobs: use what='generate', or compare='bitwise' for logits")
    if isinstance(compare, dict) and top_logprobs < 1:
        raise ValueError(f"top_logprobs={top_logprobs!r}: the rules need top-k logprobs, k >= 1")
    if not batch_sizes or any(not isinstance(size, int) or size < 1 for size in batch_sizes):
        raise ValueError(f"batch_sizes={tuple(batch_sizes)!r}: expected whole numbers >= 1")


def _random_prompts(forward, count: int, rng: random.Random) -> list[list[int]]:
    """``count`` prompts of random ordinary tokens (no special tokens: an EOS would end a prompt's meaning)."""
    tokenizer = forward.tokenizer
    special = set(tokenizer.all_special_ids)
    vocabulary = [token for token in range(tokenizer.vocab_size) if token not in special]
    return [rng.choices(vocabulary, k=rng.randint(*RANDOM_PROMPT_LENGTHS)) for _ in range(count)]


def _row(position: str | int, size: int) -> int:
    rows = {"first": 0, "middle": size // 2, "last": size - 1}
    if isinstance(position, str):
        if position not in rows:
            raise ValueError(f"positions: {position!r} is none of {POSITIONS} and not a row number")
        return rows[position]
    if not isinstance(position, int) or not 0 <= position < size:
        raise ValueError(f"positions: row {position!r} is past the batch of {size} (rows 0 to {size - 1})")
    return position


def _batches(needle_ids, pool, batch_sizes, positions, rng) -> dict[tuple[int, int, str], list[list[int]]]:
    """(batch size, the needle's row, position label) -> the batch, the others drawn without repeats.
    Positions that land on the same row (all of them in a batch of 1) run once, their labels joined."""
    if len(pool) < max(batch_sizes) - 1:
        raise ValueError(
            f"others: {len(pool)} prompts, but a batch of {max(batch_sizes)} needs {max(batch_sizes) - 1} besides the needle"
        )
    batches = {}
    for size in batch_sizes:
        labels: dict[int, list[str]] = {}
        for position in positions:
            labels.setdefault(_row(position, size), []).append(str(position))
        for row, names in labels.items():
            fill = rng.sample(pool, size - 1)
            batches[size, row, "/".join(names)] = [*fill[:row], needle_ids, *fill[row:]]
    return batches


def _compare(size: int, row: int, label: str, in_batch, alone, compare: str | dict) -> InvarianceCase:
    if isinstance(alone, Generation):
        identical = (in_batch.output_ids, in_batch.prompt_logprobs, in_batch.output_logprobs) == (
            alone.output_ids,
            alone.prompt_logprobs,
            alone.output_logprobs,
        )
        difference, divergence = _largest_logprob_difference(in_batch, alone), first_divergence(in_batch, alone)
    else:
        import torch

        identical = torch.equal(in_batch, alone)
        difference, divergence = (in_batch.float() - alone.float()).abs().max().item(), None
    mismatches = () if compare == "bitwise" else tuple(logprob_mismatches([in_batch], [alone], names=NAMES, **compare))
    passed = identical if compare == "bitwise" else not mismatches
    return InvarianceCase(size, row, label, identical, difference, divergence, passed, mismatches)


def _largest_logprob_difference(a: Generation, b: Generation) -> float:
    """Over every prompt position, and every output position up to the first differing token:
    the chosen token's logprob and the top-k values, best first."""
    divergence = first_divergence(a, b)
    outputs = min(len(a.output_ids), len(b.output_ids)) if divergence is None else divergence + 1
    prompt_pairs = zip(a.prompt_logprobs or [], b.prompt_logprobs or [])
    output_pairs = list(zip(a.output_logprobs or [], b.output_logprobs or []))[:outputs]
    pairs = [*prompt_pairs, *output_pairs]
    return max((_entry_difference(x, y) for x, y in pairs if x is not None and y is not None), default=0.0)


def _entry_difference(x: TokenLogprob, y: TokenLogprob) -> float:
    top_x, top_y = sorted(x.top.values(), reverse=True), sorted(y.top.values(), reverse=True)
    return max(abs(x.logprob - y.logprob), *(abs(p - q) for p, q in zip(top_x, top_y)))
