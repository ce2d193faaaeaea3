"""Collection: runner tests marked, grouped by config (so each config is built once per worker),
and GPU skips added where the test is."""

from __future__ import annotations

import hashlib

import pytest

from .. import devices
from ..errors import SpecError
from ..runner import RunnerFactory
from .keys import factory_fixtures_key, factory_key
from .settings import FactoryFixtures, TestSettings
from .xdist import CONFIG_GROUP_PREFIX

# Tests that ask for any of these, or for a factories.sglang_runner fixture, build (or reuse) a
# runner, an Engine or a server: ordered and xdist-grouped by config, marked sglang_runner.
RUNNER_FIXTURES = frozenset(
    {"runner", "sglang_live", "sglang_forward", "sglang_rank", "runner_factory", "sglang_engine", "sglang_server"}
)


def _config_key(item: pytest.Item, factory: RunnerFactory, factories: FactoryFixtures) -> str | None:
    """The runner config this test uses, as text; None for the default config (or a bad one:
    the test reports it when it runs, collection goes on)."""
    try:
        spec = factory.spec_for(**TestSettings.of(item, factories).overrides)
    except SpecError:
        return None
    return None if spec == factory.default_spec else repr(spec)


def _uses_runner(item: pytest.Item, factories: FactoryFixtures) -> bool:
    return not RUNNER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())) or bool(factories.for_item(item))


def _gpu_marker(item: pytest.Item, alias: bool):
    marker = item.get_closest_marker("sglang_gpu")
    if marker is None and alias:
        marker = item.get_closest_marker("gpu")
        if marker is not None:
            item.warn(
                pytest.PytestDeprecationWarning(
                    "@pytest.mark.gpu(n) is now @pytest.mark.sglang_gpu(n); the old name still works"
                )
            )
    return marker


def _gpu_skip_reason(item: pytest.Item, alias: bool) -> str | None:
    marker = _gpu_marker(item, alias)
    if marker is None:
        return None
    needed = marker.kwargs.get("n", marker.args[0] if marker.args else 1)
    found = devices.cuda_device_count()  # imports torch: only when a test asks for GPUs
    return f"needs {needed} CUDA GPU(s), found {found}" if found < needed else None


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the runner tests and group them by config (so each config is built once), in the
    places runner tests already held: other tests keep their order. Skips are added as marks, so
    pytest reports them at the test."""
    factory, factories = config.stash[factory_key], config.stash[factory_fixtures_key]
    skip_all = config.getoption("sglang_skip") or config.getini("sglang_skip")
    gpu_alias = config.getini("sglang_gpu_alias")
    slots, keys = [], {}
    for index, item in enumerate(items):
        reason = _gpu_skip_reason(item, gpu_alias)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        if _uses_runner(item, factories):
            item.add_marker("sglang_runner")
            if skip_all:
                item.add_marker(pytest.mark.skip(reason="--sglang-skip: tests that use an SGLang runner are skipped"))
            keys[item] = _config_key(item, factory, factories)
            if keys[item] is not None:
                item.add_marker(pytest.mark.xdist_group(name=CONFIG_GROUP_PREFIX + _short_hash(keys[item])))
            slots.append(index)
    ordered = sorted((items[i] for i in slots), key=lambda item: (keys[item] is not None, keys[item] or ""))
    for index, item in zip(slots, ordered):
        items[index] = item
