"""Fixture factories: one named fixture per runner configuration, as pytest-postgresql's
``factories.postgresql_proc(...)`` gives one per database.

In a conftest::

    from pytest_sglang_runner import factories

    llama = factories.sglang_runner(model="embedded-llama", dtype="float32")
    llama_hf = factories.hf_runner(llama)

    def test_decode(llama, llama_hf):
        assert_logprobs_close(llama.forward.generate(["the film was"]), llama_hf.generate(["the film was"]))

The kit reads a factory fixture's settings at collection (`overrides_of`), so its tests are
ordered and xdist-grouped with their config like marker tests, and a runner is built once per
config and process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from .options import RunnerSpec, SpecError

if TYPE_CHECKING:
    from .lifecycle import LiveRunner, RunnerFactory
    from .reference import HFRunner

OVERRIDES_ATTRIBUTE = "_sglang_runner_overrides"


def _checked(factory: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Bad settings fail where the fixture is defined, not at its first test."""
    try:
        RunnerSpec().with_overrides(**overrides)
    except SpecError as exc:
        arguments = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise pytest.UsageError(f"factories.{factory}({arguments}): {exc}") from None
    return dict(overrides)


def overrides_of(function: Any) -> dict[str, Any] | None:
    """The settings of a factory-made fixture function, or None for any other fixture."""
    return getattr(function, OVERRIDES_ATTRIBUTE, None)


def sglang_runner(**overrides: Any):
    """A fixture giving the `LiveRunner` (``.model_runner``, ``.forward``, ``.model_path``) built
    with these settings (RunnerSpec fields such as ``model``, ``dtype``, ``tp``, or ServerArgs
    fields) over the command line and ini file; a test's ``sglang`` marker still applies on top."""
    overrides = _checked("sglang_runner", overrides)

    def named_runner(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> LiveRunner:
        from .plugin import live_runner_for

        return live_runner_for(request, runner_factory)

    setattr(named_runner, OVERRIDES_ATTRIBUTE, overrides)
    return pytest.fixture(named_runner)


def hf_runner(runner_fixture):
    """A fixture giving the HF transformers reference (`HFRunner`) of a `sglang_runner` fixture's
    checkpoint, in its dtype and on its device. Builds no SGLang runner."""
    overrides = overrides_of(runner_fixture)
    if overrides is None:
        raise pytest.UsageError(f"factories.hf_runner({runner_fixture!r}): pass a fixture made by factories.sglang_runner(...)")

    def named_hf_runner(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> HFRunner:
        from .plugin import hf_runner_for

        return hf_runner_for(request, runner_factory, overrides)

    return pytest.fixture(named_hf_runner)
