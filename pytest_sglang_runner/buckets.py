"""Size buckets for packed batches, so batches of new layouts can replay one captured graph.

Training draws a fresh batch every step: the sequence lengths never repeat, so a graph keyed by
the exact layout never replays. A bucket is keyed by the number of real sequences, a total
token count from a ladder (steps of at most 1/8 of the size) and the longest sequence rounded up
to a power of two (attention kernels size their grids by it); the batch is packed as its real
sequences followed by filler sequences, none longer than that, that bring it to the total. Each filler sequence
is a sequence of its own, so it attends only to itself, and nobody reads its outputs: a real
example's result is the same inside any bucket (`tests/mezo/test_buckets.py` proves it).

A leaf: imports nothing of the kit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

SMALLEST_STEP = 16
LARGEST_STEP = 256


def bucket_longest(length: int) -> int:
    """The power of two >= ``length`` (at least 16): the longest sequence a bucket admits."""
    return max(SMALLEST_STEP, 1 << (max(1, length) - 1).bit_length())


def bucket_total(tokens: int) -> int:
    """The smallest ladder total >= ``tokens``: a multiple of 2^(bits - 4), 16 to 256, so the
    padding is under 1/8 of the real tokens (and under 16 for small batches)."""
    if tokens < 1:
        raise ValueError(f"a batch has at least one token, not {tokens}")
    step = min(max(2 ** (tokens.bit_length() - 4), SMALLEST_STEP), LARGEST_STEP)
    return math.ceil(tokens / step) * step


@dataclass(frozen=True)
class BucketLayout:
    """A batch's real sequence lengths and the filler sequences that bring it to its bucket."""

    lengths: tuple[int, ...]
    filler: tuple[int, ...]
    longest: int  # no sequence of the bucket is longer

    @classmethod
    def of(cls, lengths: Sequence[int], longest_filler: int = LARGEST_STEP) -> BucketLayout:
        """``longest_filler``: the longest sequence the model takes (filler is cut to fit)."""
        lengths = tuple(int(n) for n in lengths)
        longest = bucket_longest(max(lengths))
        piece = min(longest_filler, longest)
        pieces, last = divmod(bucket_total(sum(lengths)) - sum(lengths), piece)
        return cls(lengths, (piece,) * pieces + ((last,) if last else ()), longest)

    @property
    def key(self) -> tuple[int, int, int, int]:
        """What a captured graph depends on: real sequences, filler sequences, total tokens, longest sequence."""
        return len(self.lengths), len(self.filler), self.total, self.longest

    @property
    def total(self) -> int:
        return sum(self.lengths) + sum(self.filler)

    @property
    def packed_lengths(self) -> tuple[int, ...]:
        return self.lengths + self.filler

    def pad(self, token_lists: Sequence[Sequence[int]], filler_token: int) -> list[list[int]]:
        """The real sequences, then the filler sequences of ``filler_token``."""
        return [list(ids) for ids in token_lists] + [[filler_token] * n for n in self.filler]

    def positions(self) -> list[int]:
        """Each packed token's position in its own sequence."""
        return [p for n in self.packed_lengths for p in range(n)]
