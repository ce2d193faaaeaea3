"""Moved to `pytest_sglang_runner.runner.forward` (0.2.0); these names stay importable from here."""

from .runner.forward import Forward, ForwardResult, PreparedBatch  # noqa: F401
from .tokens import Tokenized  # noqa: F401
