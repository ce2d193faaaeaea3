"""Collection: runner tests marked, grouped by config (so each config is built once per worker),
GPU skips added where the test is, and on an xdist worker the GPUs each worker owns, from the
TPs the collected tests ask for."""

from __future__ import annotations

import hashlib

import pytest

from .. import devices
from ..errors import SpecError
from ..options import RunnerSpec
from ..runner import RunnerFactory
from .keys import factory_fixtures_key, factory_key
from .settings import FactoryFixtures, TestSettings
from .xdist import CONFIG_GROUP_PREFIX

# Tests that ask for any of these, or for a factories.sglang_runner fixture, build (or reuse) a
# runner, an Engine or a server: ordered and xdist-grouped by config, marked sglang_runner.
RUNNER_FIXTURES = frozenset(
    {
        "runner",
        "sglang_live",
        "sglang_forward",
        "sglang_rank",
        "runner_factory",
        "sglang_compare",
        "sglang_engine",
        "sglang_server",
    }
)


def _runner_spec(item: pytest.Item, factory: RunnerFactory, factories: FactoryFixtures) -> RunnerSpec | None:
    """The runner config this test uses; None for a bad one (the test reports it when it runs,
    collection goes on)."""
    try:
        return factory.spec_for(**TestSettings.of(item, factories).overrides)
    except SpecError:
        return None


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


@pytest.hookimpl(wrapper=True, tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """Mark the runner tests and group them by config (so each config is built once), in the
    places runner tests already held: other tests keep their order. Skips are added as marks, so
    pytest reports them at the test. Once every hook has deselected what it would (``-k``, ``-m``,
    ``--deselect``), an xdist worker's GPUs follow from the tests left."""
    factory, factories = config.stash[factory_key], config.stash[factory_fixtures_key]
    skip_all = config.getoption("sglang_skip") or config.getini("sglang_skip")
    gpu_alias = config.getini("sglang_gpu_alias")
    slots, keys, specs = [], {}, {}
    for index, item in enumerate(items):
        reason = _gpu_skip_reason(item, gpu_alias)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        if _uses_runner(item, factories):
            item.add_marker("sglang_runner")
            if skip_all:
                item.add_marker(pytest.mark.skip(reason="--sglang-skip: tests that use an SGLang runner are skipped"))
            specs[item] = spec = _runner_spec(item, factory, factories)
            keys[item] = None if spec is None or spec == factory.default_spec else repr(spec)
            if keys[item] is not None:
                item.add_marker(pytest.mark.xdist_group(name=CONFIG_GROUP_PREFIX + _short_hash(keys[item])))
            slots.append(index)
    ordered = sorted((items[i] for i in slots), key=lambda item: (keys[item] is not None, keys[item] or ""))
    for index, item in zip(slots, ordered):
        items[index] = item
    yield
    if devices.xdist_worker_count():
        runs = [specs[item] for item in items if specs.get(item) is not None and not item.get_closest_marker("skip")]
        previous = devices.share_gpus(_gpu_share(factory.default_spec, runs))
        config.add_cleanup(lambda: devices.share_gpus(previous))


def _gpu_share(default_spec: RunnerSpec, specs: list[RunnerSpec]) -> devices.GpuShare:
    """Each xdist worker owns as many GPUs as the largest TP that a test it collected asks for
    (marker, factory fixture, the run's own) and that fits: worker gwK owns ``K*B .. K*B+B-1``.
    Every worker collects the same tests, so all of them choose the same B.

    A TP that does not fit the workers (``-n N`` times TP beyond the GPUs) fails its own tests at
    setup, each with the ``-n`` that would fit and its marker; the others run. The largest TP is
    known only here, after the workers started: a usage error raised on a worker reaches the
    user as xdist's INTERNALERROR traceback, not as one line. A skip would let a run pass without
    the tests it was asked to run. torch is imported (to count the GPUs) only when a test asks
    for more GPUs than the run's TP, which the controller checked already."""
    run_tp = default_spec.tp if default_spec.device != "cpu" else 1
    asked = {spec.tp for spec in specs if spec.device != "cpu" and spec.tp > run_tp}
    workers = devices.xdist_worker_count()
    per_worker = run_tp
    if asked and not devices.surely_no_gpu():
        per_worker = devices.gpus_per_worker(workers, run_tp, asked, devices.cuda_device_count())
    return devices.GpuShare(workers, per_worker)
