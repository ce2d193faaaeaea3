"""A test's settings, as one value built in one place: its factory fixture's runner settings,
its ``sglang`` markers' on top, the time limit and the every-rank flag split off.

Which of a test's fixtures are factory-made (`factories.sglang_runner`) is found by public means
only: `FactoryFixtures` sees every conftest and plugin module as it is registered, and a test's
own module and class, and knows the fixture objects `factories` made by identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .. import timeouts
from ..errors import SpecError
from ..options import TEST_SETTINGS, RunnerSpec, spec_from_values


def spec_from_config(config: pytest.Config) -> RunnerSpec:
    """Command line over ini key over default."""

    def value(option):
        given = config.getoption(option.ini)
        return given if given is not None else (config.getini(option.ini) or None)

    return spec_from_values(value)


# The fixtures that give the test's own config (no factory fixture's).
TEST_CONFIG_FIXTURES = frozenset({"runner", "sglang_live", "sglang_forward", "sglang_rank"})

# id(fixture object) -> (the object, its settings): filled by `factories`, read at collection.
_FACTORY_MADE: dict[int, tuple[Any, dict[str, Any]]] = {}
# id(fixture object) -> the usage error of its factory call, raised when its conftest registers.
_FACTORY_ERRORS: dict[int, str] = {}


def remember_factory_fixture(fixture: Any, overrides: dict[str, Any], error: str | None = None) -> None:
    _FACTORY_MADE[id(fixture)] = (fixture, overrides)
    if error is not None:
        _FACTORY_ERRORS[id(fixture)] = error


def factory_settings(obj: Any) -> dict[str, Any] | None:
    """The settings of a fixture made by `factories.sglang_runner`, or None for anything else."""
    entry = _FACTORY_MADE.get(id(obj))
    return entry[1] if entry is not None and entry[0] is obj else None


def _factory_fixtures_in(namespace: Any) -> dict[str, dict[str, Any]]:
    found = {}
    for name, value in vars(namespace).items() if namespace is not None else ():
        overrides = factory_settings(value)
        if overrides is not None:
            found[name] = overrides
    return found


def _raise_factory_error(namespace: Any) -> None:
    """A bad factory call's one-line usage error (raised at the call, in a conftest's import, pytest
    would print "ImportError while loading conftest" and a traceback)."""
    for value in vars(namespace).values():
        if factory_settings(value) is not None and id(value) in _FACTORY_ERRORS:
            raise pytest.UsageError(_FACTORY_ERRORS[id(value)])


class FactoryFixtures:
    """The factory-made fixtures visible to a test, by name, closest definition first (as pytest
    resolves fixture names): the test's class, its module, its conftests (deepest first), then any
    other plugin module. A registered pytest plugin object itself."""

    def __init__(self) -> None:
        self._conftests: dict[Path, dict[str, dict[str, Any]]] = {}
        self._plugins: dict[str, dict[str, Any]] = {}
        self._namespaces: dict[Any, dict[str, dict[str, Any]]] = {}  # test modules and classes, scanned once

    def pytest_plugin_registered(self, plugin: Any) -> None:
        """Historic: called for every plugin registered before this object too."""
        path = getattr(plugin, "__file__", None)
        found = _factory_fixtures_in(plugin) if path else {}
        if not found:
            return
        _raise_factory_error(plugin)  # at pytest_configure for the conftests loaded before it
        if Path(path).name == "conftest.py":
            self._conftests[Path(path).parent] = found
        else:
            self._plugins.update(found)

    def _in_namespace(self, namespace: Any) -> dict[str, dict[str, Any]]:
        """A test module's or class's factory fixtures: scanned once, not for each of its tests
        (collection, the every-rank check and each fixture ask per test)."""
        if namespace is None:
            return {}
        if namespace not in self._namespaces:
            self._namespaces[namespace] = _factory_fixtures_in(namespace)
            _raise_factory_error(namespace)
        return self._namespaces[namespace]

    def for_item(self, item: pytest.Item) -> list[tuple[str, dict[str, Any]]]:
        """(fixture name, settings) for each factory fixture this test uses, directly or not."""
        scopes = [self._plugins]
        path = Path(getattr(item, "path", "."))
        scopes += [
            found
            for directory, found in sorted(self._conftests.items(), key=lambda kv: len(kv[0].parts))
            if directory in path.parents
        ]
        scopes += [self._in_namespace(getattr(item, "module", None)), self._in_namespace(getattr(item, "cls", None))]
        visible: dict[str, dict[str, Any]] = {}
        for scope in scopes:  # closer definitions last, so they win
            visible.update(scope)
        return [(name, visible[name]) for name in getattr(item, "fixturenames", ()) if name in visible]


def marker_text(node: pytest.Item) -> str:
    """The test's ``sglang`` markers as written, closest last (for error messages)."""
    calls = []
    for marker in reversed(list(node.iter_markers("sglang"))):
        arguments = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
        calls.append(f"@pytest.mark.sglang({', '.join(arguments)})")
    return " + ".join(calls)


def marker_overrides(node: pytest.Item) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers("sglang"))):  # closest marker wins
        if marker.args:
            raise SpecError("@pytest.mark.sglang takes keyword arguments only, e.g. sglang(tp=2)")
        overrides.update(marker.kwargs)
    return overrides


@dataclass(frozen=True)
class TestSettings:
    """What a test asks of the kit: runner settings over the run's (``overrides``: RunnerSpec and
    ServerArgs fields), its time limit (None: the run's) and whether it runs on every TP rank."""

    __test__ = False  # not a test class, whatever pytest's name rules say

    overrides: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    every_rank: bool = False
    mutates_weights: bool = False  # the test changes the runner's weights on purpose (`guard`)

    @classmethod
    def of(
        cls, item: pytest.Item, factories: FactoryFixtures, factory_overrides: dict[str, Any] | None = None
    ) -> TestSettings:
        """The settings of ``item``; ``factory_overrides``: those of the factory fixture asking
        (else the test's factory fixtures are looked up). A SpecError names what is wrong."""
        if factory_overrides is None:
            named = factories.for_item(item)
            plain = sorted(TEST_CONFIG_FIXTURES.intersection(getattr(item, "fixturenames", ())))
            if len({repr(sorted(o.items())) for _, o in named}) > 1 or (named and plain):
                names = ", ".join([n for n, _ in named] + plain)
                raise SpecError(
                    f"this test asks for runners of different configs ({names}); one runner lives per process, so a test "
                    "uses one config (a factory fixture's LiveRunner has .model_runner and .forward)"
                )
            factory_overrides = named[0][1] if named else {}
        merged = {**factory_overrides, **marker_overrides(item)}
        timeout, merged = timeouts.split_limit(merged)
        flags = {name: parse(merged.pop(name)) for name, parse in TEST_SETTINGS.items() if name in merged}
        return cls(merged, timeout, **flags)

    def factory_kwargs(self) -> dict[str, Any]:
        """What `RunnerFactory.get` and the `ServiceFactory` take: the overrides and the limit."""
        return self.overrides if self.timeout is None else {**self.overrides, timeouts.KEY: self.timeout}
