"""Moved to `pytest_sglang_runner.runner` (0.2.0); these names stay importable from here."""

from .errors import RunnerBuildError  # noqa: F401
from .runner.factory import RunnerFactory, teardown  # noqa: F401
from .runner.live import BuildRecord, LiveRunner  # noqa: F401
from .runner.plan import BuildPlan  # noqa: F401
