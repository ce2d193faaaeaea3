"""Moved to `pytest_sglang_runner.results` (the types) and `runner.generate` (0.2.0); these names stay importable from here."""

from .results import Generation, TokenLogprob  # noqa: F401
from .runner.generate import generate  # noqa: F401
