"""Fixture factories: one named fixture per runner configuration, as pytest-postgresql's
``factories.postgresql_proc(...)`` gives one per database.

In a conftest::

    from pytest_sglang_runner import factories

    llama = factories.sglang_runner(model="embedded-llama", dtype="float32")
    llama_hf = factories.hf_runner(llama)

    def test_decode(llama, llama_hf):
        assert_logprobs_close(llama.forward.generate(["the film was"]), llama_hf.generate(["the film was"]))

Each fixture carries its settings in its closure. The kit also knows the fixture objects made
here (`settings.factory_settings`), so at collection it finds them by name in conftests and test
modules: their tests are ordered and xdist-grouped with their config like marker tests, and a
runner is built once per config and process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ..errors import SpecError
from ..options import RunnerSpec
from .fixtures import hf_runner_for, live_runner_for
from .settings import factory_settings, remember_factory_fixture

if TYPE_CHECKING:
    from ..reference import HFRunner
    from ..runner import LiveRunner, RunnerFactory


def _problem(factory: str, overrides: dict[str, Any]) -> str | None:
    """What is wrong with the settings, naming the factory call, or None. Raised as a usage error
    when the conftest registers (`settings.FactoryFixtures`): raised here, at its import, pytest
    would show "ImportError while loading conftest" and a traceback."""
    try:
        RunnerSpec().with_overrides(**overrides)
    except SpecError as exc:
        arguments = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        return f"factories.{factory}({arguments}): {exc}"
    return None


def sglang_runner(**overrides: Any):
    """A fixture giving the `LiveRunner` (``.model_runner``, ``.forward``, ``.model_path``) built
    with these settings (RunnerSpec fields such as ``model``, ``dtype``, ``tp``, or ServerArgs
    fields) over the command line and ini file; a test's ``sglang`` marker still applies on top."""
    overrides = dict(overrides)
    problem = _problem("sglang_runner", overrides)

    def named_runner(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> LiveRunner:
        return live_runner_for(request, runner_factory, overrides)

    fixture = pytest.fixture(named_runner)
    remember_factory_fixture(fixture, overrides, problem)
    return fixture


def hf_runner(runner_fixture):
    """A fixture giving the HF transformers reference (`HFRunner`) of a `sglang_runner` fixture's
    checkpoint, in its dtype and on its device. Builds no SGLang runner."""
    overrides = factory_settings(runner_fixture)
    if overrides is None:
        raise pytest.UsageError(
            f"factories.hf_runner({runner_fixture!r}): pass a fixture made by factories.sglang_runner(...)"
        )

    def named_hf_runner(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> HFRunner:
        return hf_runner_for(request, runner_factory, overrides)

    return pytest.fixture(named_hf_runner)
