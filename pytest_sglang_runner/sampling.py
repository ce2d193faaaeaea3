"""Is a sampler right? Observed token frequencies against the distribution it should sample from.

`expected_distribution` turns next-token logits into the distribution SGLang's sampler draws from
(temperature, then top-k, top-p and min-p over the sorted probabilities, as its pytorch backend
does them); `assert_samples_match` tests samples against a distribution with a chi-square
goodness-of-fit test whose p-value threshold is the false-failure rate, so a correct sampler
fails it with about that probability. A leaf: imports nothing of the kit.
"""

from __future__ import annotations

from typing import Sequence

import torch

MIN_EXPECTED_COUNT = 5.0  # the usual rule for the chi-square approximation to hold per category


def expected_distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """The float64 distribution over the vocabulary that SGLang samples from, given 1-D ``logits``.

    SGLang's order (``layers/sampler.py``, ``top_k_top_p_min_p_sampling_from_probs_torch``):
    softmax of ``logits / temperature``; sort descending; keep the first ``top_k``; keep a token
    while the probability of those above it (over the full distribution, not the top-k one) is at
    most ``top_p``; keep a token whose probability is at least ``min_p`` times the largest; then
    renormalise what is kept. ``temperature=0`` or ``top_k=1`` is greedy: all mass on the argmax.
    (On CUDA with FlashInfer, a request with ``min_p`` is renormalised after top-k and again after
    top-p, so its top-p is measured on the top-k distribution and may keep a few more tokens.)
    """
    if logits.dim() != 1:
        raise ValueError(f"logits of shape {tuple(logits.shape)}: expected one row over the vocabulary")
    logits = logits.detach().float().cpu()
    if temperature == 0 or top_k == 1:
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).double()
    probs = torch.softmax(logits / temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = torch.ones_like(ordered, dtype=torch.bool)
    if top_p < 1:
        keep &= torch.cumsum(ordered, dim=-1) - ordered <= top_p
    if top_k != -1:
        keep &= torch.arange(ordered.numel()) < top_k
    if min_p > 0:
        keep &= ordered >= ordered[0] * min_p
    kept = torch.where(keep, ordered, 0.0).double()
    return torch.zeros_like(kept).scatter_(0, order, kept / kept.sum())


def chi_square_survival(statistic: float, degrees_of_freedom: int) -> float:
    """P(X >= statistic) for X chi-square with ``degrees_of_freedom``: the upper regularised gamma."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees_of_freedom={degrees_of_freedom}: expected >= 1")
    half = torch.tensor(degrees_of_freedom / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(half, torch.tensor(statistic / 2, dtype=torch.float64)))


def _categories(expected: torch.Tensor) -> list[torch.Tensor]:
    """Token ids grouped so that every group expects at least `MIN_EXPECTED_COUNT` samples:
    the frequent tokens alone, the rare ones pooled (the pool joins the rarest frequent token
    when it is itself too small)."""
    order = expected.argsort(descending=True)
    frequent = int((expected[order] >= MIN_EXPECTED_COUNT).sum())
    groups = [order[i : i + 1] for i in range(frequent)]
    rare = order[frequent:]
    if len(rare) and float(expected[rare].sum()) > 0:
        if float(expected[rare].sum()) >= MIN_EXPECTED_COUNT or not groups:
            groups.append(rare)
        else:
            groups[-1] = torch.cat([groups[-1], rare])
    return groups


def _table(rows: list[tuple[str, float, int, float]], shown: int) -> str:
    lines = [f"{'tokens':>24} {'expected':>10} {'observed':>9} {'chi2 part':>10}"]
    for name, expected, observed, part in sorted(rows, key=lambda row: -row[3])[:shown]:
        lines.append(f"{name:>24} {expected:>10.1f} {observed:>9d} {part:>10.2f}")
    return "\n".join(lines)


def _name(group: torch.Tensor) -> str:
    if len(group) == 1:
        return f"token {int(group[0])}"
    return f"{len(group)} tokens pooled"


def assert_samples_match(
    samples: Sequence[int] | torch.Tensor,
    probs: torch.Tensor,
    false_failure_rate: float = 1e-3,
    shown: int = 8,
) -> float:
    """Assert that token ids ``samples`` were drawn from ``probs`` (1-D, over the vocabulary).

    A token of probability 0 in the samples fails at once. Otherwise Pearson's chi-square
    goodness-of-fit test runs over the categories of `_categories` (rare tokens pooled so every
    category expects >= 5 samples) and fails when its p-value is below ``false_failure_rate``:
    samples from ``probs`` itself fail with about that probability. The AssertionError shows the
    ``shown`` categories that contribute most (expected vs observed). Returns the p-value (1.0
    when only one category is possible, as for a greedy distribution).
    """
    if not 0 < false_failure_rate < 1:
        raise ValueError(f"false_failure_rate={false_failure_rate!r}: expected a number in (0, 1)")
    if probs.dim() != 1:
        raise ValueError(f"probs of shape {tuple(probs.shape)}: expected one row over the vocabulary")
    samples = torch.as_tensor(samples, dtype=torch.long).flatten().cpu()
    if samples.numel() == 0:
        raise ValueError("samples is empty")
    if int(samples.min()) < 0 or int(samples.max()) >= probs.numel():
        raise ValueError(f"samples hold token ids outside [0, {probs.numel()}), the vocabulary of probs")
    probs = probs.detach().double().cpu()
    probs = probs / probs.sum()
    observed = torch.bincount(samples, minlength=probs.numel())
    impossible = ((probs == 0) & (observed > 0)).nonzero().flatten()
    if len(impossible):
        counts = {int(token): int(observed[token]) for token in impossible[:shown]}
        raise AssertionError(
            f"{int(observed[impossible].sum())} of {samples.numel()} samples are tokens of probability 0 "
            f"(token: count) {counts}"
        )
    expected = probs * samples.numel()
    groups = _categories(expected)
    if len(groups) < 2:
        return 1.0
    rows = []
    for group in groups:
        want, got = float(expected[group].sum()), int(observed[group].sum())
        rows.append((_name(group), want, got, (got - want) ** 2 / want))
    statistic = sum(row[3] for row in rows)
    p_value = chi_square_survival(statistic, len(groups) - 1)
    if p_value < false_failure_rate:
        raise AssertionError(
            f"{samples.numel()} samples do not follow the distribution: chi-square {statistic:.1f} over "
            f"{len(groups) - 1} degrees of freedom, p = {p_value:.3g} < false_failure_rate {false_failure_rate}\n"
            + _table(rows, shown)
        )
    return p_value
