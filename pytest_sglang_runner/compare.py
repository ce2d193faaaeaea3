"""Compare two lists of `Generation` (the runner's and a reference's) by the rules people already use.

- **Rank rule** (vLLM's ``check_logprobs_close``): walk each sequence's output; where the greedy
  tokens first differ, each side's token must be among the other side's top-k there; after that
  the sequence is not compared any further (its contexts differ).
- **Tolerance rule** (SGLang's ``check_close_model_outputs``): the top-k logprob values, best
  first, agree within ``prefill_tolerance`` at every prompt position and within
  ``decode_tolerance`` at every output position up to and including the first divergence.

Both need logprobs on both sides (``generate(..., top_logprobs=k)`` with k >= 1). A position the
tolerance rule compares where either side has no top-k (an empty ``top``, or no entry at all) fails
it, naming that side: a side that returned no top-k never passes by comparing nothing. A failure
prints one table row per offending position: sequence, position, both tokens, both logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .results import Generation, TokenLogprob

MAX_ROWS = 20
# SGLang's tolerance defaults (5e-2 prompt, 6e-2 output) were set for float16. bfloat16 keeps three
# fewer mantissa bits: two correct implementations already differ by ~0.06 on a logprob of -6
# (relative error ~1e-2). So bfloat16 gets twice SGLang's tolerances; docs/gpu.md has the maxima measured.
BFLOAT16_TOLERANCES = dict(prefill_tolerance=1e-1, decode_tolerance=1.2e-1)


@dataclass(frozen=True)
class Mismatch:
    """One position where a rule failed."""

    rule: str
    sequence: int
    position: str  # "prompt 3" or "output 5"
    ours: TokenLogprob | None
    theirs: TokenLogprob | None
    detail: str


def _check_pairs(ours: Sequence[Generation], theirs: Sequence[Generation], need_logprobs: bool) -> None:
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} generations against {len(theirs)}: compare the results of the same prompts")
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if a.prompt_ids != b.prompt_ids:
            raise ValueError(f"sequence {index}: the two sides were given different prompts")
        if need_logprobs and (a.output_logprobs is None or b.output_logprobs is None):
            raise ValueError("logprob rules need logprobs on both sides: generate(..., top_logprobs=5)")
        if need_logprobs and a.output_logprobs and not a.output_logprobs[0].top:
            raise ValueError("logprob rules need top-k logprobs: generate(..., top_logprobs=k) with k >= 1")


def first_divergence(a: Generation, b: Generation) -> int | None:
    """The first output position whose tokens differ, or None when one output is a prefix of the other."""
    for position, (x, y) in enumerate(zip(a.output_ids, b.output_ids)):
        if x != y:
            return position
    return None


def _rank_rule(index: int, a: Generation, b: Generation) -> list[Mismatch]:
    position = first_divergence(a, b)
    if position is None:
        if len(a.output_ids) != len(b.output_ids):
            shorter = min(len(a.output_ids), len(b.output_ids))
            return [
                Mismatch(
                    "rank",
                    index,
                    f"output {shorter}",
                    None,
                    None,
                    f"same tokens, but lengths {len(a.output_ids)} and {len(b.output_ids)}",
                )
            ]
        return []
    x, y = _entry(a.output_logprobs, position), _entry(b.output_logprobs, position)
    missing = []
    if a.output_ids[position] not in (y.top if y else {}):
        missing.append("ours not in their top-k")
    if b.output_ids[position] not in (x.top if x else {}):
        missing.append("theirs not in our top-k")
    return [Mismatch("rank", index, f"output {position}", x, y, "; ".join(missing))] if missing else []


def _top_values(entry: TokenLogprob) -> list[float]:
    return sorted(entry.top.values(), reverse=True)


def _entry(entries: list | None, position: int) -> TokenLogprob | None:
    return entries[position] if entries is not None and position < len(entries) else None


def _compared_positions(a: Generation, b: Generation):
    """(phase, position, ours, theirs) where the tolerance rule looks: every prompt position after the
    first (the first has no logprob; compared too where both sides have one), and every output
    position up to and including the first divergence. An entry a side lacks there is None."""
    for i in range(len(a.prompt_ids)):
        x, y = _entry(a.prompt_logprobs, i), _entry(b.prompt_logprobs, i)
        if i > 0 or (x is not None and y is not None):
            yield "prompt", i, x, y
    divergence = first_divergence(a, b)
    compared = min(len(a.output_ids), len(b.output_ids)) if divergence is None else divergence + 1
    for j in range(compared):
        yield "output", j, _entry(a.output_logprobs, j), _entry(b.output_logprobs, j)


def _lacking_top_k(x: TokenLogprob | None, y: TokenLogprob | None, names: tuple[str, str]) -> str | None:
    """Why the tolerance rule cannot compare this position (a side without top-k there), or None."""
    lacking = [name for name, entry in zip(names, (x, y)) if entry is None or not entry.top]
    return f"no top-k logprobs from {' and '.join(lacking)}: nothing to compare" if lacking else None


def _gap(x: TokenLogprob, y: TokenLogprob) -> float:
    """The largest difference between the two top-k's logprob values, best first (both non-empty)."""
    return max(abs(p - q) for p, q in zip(_top_values(x), _top_values(y)))


def _tolerance_rule(
    index: int,
    a: Generation,
    b: Generation,
    prefill_tolerance: float,
    decode_tolerance: float,
    names: tuple[str, str],
) -> list[Mismatch]:
    mismatches = []
    for phase, position, x, y in _compared_positions(a, b):
        lacking = _lacking_top_k(x, y, names)
        if lacking:
            mismatches.append(Mismatch("tolerance", index, f"{phase} {position}", x, y, lacking))
            continue
        gap = _gap(x, y)
        tolerance = prefill_tolerance if phase == "prompt" else decode_tolerance
        if not gap < tolerance:
            mismatches.append(
                Mismatch(
                    "tolerance",
                    index,
                    f"{phase} {position}",
                    x,
                    y,
                    f"top-k logprobs differ by {gap:.3g} (tolerance {tolerance:g})",
                )
            )
    return mismatches


def max_logprob_differences(
    ours: Sequence[Generation], theirs: Sequence[Generation], *, names: tuple[str, str] = ("sglang", "hf")
) -> dict[str, float]:
    """The largest top-k logprob difference the tolerance rule sees, per phase: what a tolerance must exceed.

    A position where a side has no top-k is an `AssertionError` naming the side (there is no difference to give)."""
    _check_pairs(ours, theirs, need_logprobs=True)
    largest = {"prompt": 0.0, "output": 0.0}
    for index, (a, b) in enumerate(zip(ours, theirs)):
        for phase, position, x, y in _compared_positions(a, b):
            lacking = _lacking_top_k(x, y, names)
            if lacking:
                raise AssertionError(f"sequence {index}, {phase} {position}: {lacking}")
            largest[phase] = max(largest[phase], _gap(x, y))
    return largest


def logprob_mismatches(
    ours: Sequence[Generation],
    theirs: Sequence[Generation],
    *,
    rank_rule: bool = True,
    tolerance_rule: bool = True,
    prefill_tolerance: float = 5e-2,
    decode_tolerance: float = 6e-2,
    names: tuple[str, str] = ("sglang", "hf"),
) -> list[Mismatch]:
    """Every position where a chosen rule fails (empty when the two sides agree); ``names`` name
    the side without top-k logprobs where the tolerance rule finds one."""
    _check_pairs(ours, theirs, need_logprobs=True)
    mismatches = []
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if rank_rule:
            mismatches += _rank_rule(index, a, b)
        if tolerance_rule:
            mismatches += _tolerance_rule(index, a, b, prefill_tolerance, decode_tolerance, names)
    return mismatches


def _cell(entry: TokenLogprob | None, field: str) -> str:
    if entry is None:
        return "-"
    return str(entry.token_id) if field == "token" else f"{entry.logprob:.4f}"


def format_mismatches(mismatches: Sequence[Mismatch], names: tuple[str, str] = ("sglang", "hf")) -> str:
    ours, theirs = names
    header = (
        "rule",
        "seq",
        "position",
        f"{ours} token",
        f"{theirs} token",
        f"{ours} logprob",
        f"{theirs} logprob",
        "detail",
    )
    rows = [
        (
            m.rule,
            str(m.sequence),
            m.position,
            _cell(m.ours, "token"),
            _cell(m.theirs, "token"),
            _cell(m.ours, "logprob"),
            _cell(m.theirs, "logprob"),
            m.detail,
        )
        for m in mismatches[:MAX_ROWS]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    if len(mismatches) > MAX_ROWS:
        lines.append(f"... and {len(mismatches) - MAX_ROWS} more")
    return "\n".join(lines)


def assert_logprobs_close(
    ours: Sequence[Generation], theirs: Sequence[Generation], *, names: tuple[str, str] = ("sglang", "hf"), **rules
) -> None:
    """Fail with a table unless ``ours`` and ``theirs`` pass the rank rule and the tolerance rule.

    ``rules`` are `logprob_mismatches`' keywords: ``rank_rule``, ``tolerance_rule`` (both on),
    ``prefill_tolerance`` (5e-2) and ``decode_tolerance`` (6e-2).
    """
    mismatches = logprob_mismatches(ours, theirs, names=names, **rules)
    if mismatches:
        raise AssertionError(
            f"{names[0]} and {names[1]} logprobs disagree at {len(mismatches)} position(s):\n{format_mismatches(mismatches, names)}"
        )


def assert_tokens_equal(
    ours: Sequence[Generation], theirs: Sequence[Generation], *, names: tuple[str, str] = ("sglang", "hf")
) -> None:
    """Fail with a table unless every sequence's output tokens are exactly the same."""
    _check_pairs(ours, theirs, need_logprobs=False)
    mismatches = []
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if a.output_ids == b.output_ids:
            continue
        position = first_divergence(a, b)
        if position is None:
            position = min(len(a.output_ids), len(b.output_ids))
        x = a.output_logprobs[position] if a.output_logprobs and position < len(a.output_logprobs) else None
        y = b.output_logprobs[position] if b.output_logprobs and position < len(b.output_logprobs) else None
        detail = f"{names[0]} {a.output_ids} vs {names[1]} {b.output_ids}"
        mismatches.append(Mismatch("tokens", index, f"output {position}", x, y, detail))
    if mismatches:
        raise AssertionError(
            f"{len(mismatches)} of {len(ours)} sequences differ:\n{format_mismatches(mismatches, names)}"
        )
