"""A second runner config as a named fixture (pytest-postgresql's factory style)."""

from pytest_sglang_runner import factories

small_pool = factories.sglang_runner(max_total_tokens=2048)
