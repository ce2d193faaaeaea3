"""Moved to `pytest_sglang_runner.runner.ranks` (0.2.0; `RankFailure` to `errors`); these names stay importable from here."""

from .errors import RankFailure  # noqa: F401
from .runner.ranks import RANK_FIXTURES, EveryRankCall, FunctionRef, RankContext  # noqa: F401
