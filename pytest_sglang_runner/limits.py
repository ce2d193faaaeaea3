"""Moved to `pytest_sglang_runner.runner.limits` (0.2.0; `BatchLimitError` to `errors`); these names stay importable from here."""

from .errors import BatchLimitError  # noqa: F401
from .runner.limits import check_batch, check_token_ids  # noqa: F401
