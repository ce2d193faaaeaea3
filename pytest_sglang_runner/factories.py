"""Fixture factories (``factories.sglang_runner(...)``, ``factories.hf_runner(...)``): they live in
`pytest_sglang_runner.plugin.factories`; import them from here."""

from .plugin.factories import hf_runner, sglang_runner

__all__ = ["hf_runner", "sglang_runner"]
