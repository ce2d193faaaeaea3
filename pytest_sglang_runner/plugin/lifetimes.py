"""A service no later test needs stops as soon as its last test is done, not at the session's end.

On one GPU an Engine and a server hold memory beside the runner, and on CPU each is a process
tree of its own. After collection (and ``-k`` / ``-m``) each test's Engine and server configs are
counted; after a test's teardown, a config none of the remaining tests asks for is stopped
(`services.ServiceFactory.stop_early`, which records the memory it gave back). An xdist worker
collects every test but runs some: a config whose tests spread over workers is counted whole, so
it stops at the session's end there, as before; a config of its own (loadgroup keeps it on one
worker) stops after its last test.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ..errors import SpecError
from ..runner import RunnerFactory
from ..services import ServiceFactory
from .settings import FactoryFixtures, TestSettings

SERVICE_FIXTURES = ("sglang_engine", "sglang_server")


class ServiceLifetimes:
    def __init__(self, services: ServiceFactory, runners: RunnerFactory, factories: FactoryFixtures):
        self.services, self.runners, self.factories = services, runners, factories
        self.remaining: Counter = Counter()  # (fixture, spec) -> tests left that ask for it
        self.needs: dict[
            pytest.Item, list[tuple]
        ] = {}  # test -> its (fixture, spec) pairs (xdist renames ids meanwhile)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            fixtures = [name for name in SERVICE_FIXTURES if name in getattr(item, "fixturenames", ())]
            if not fixtures:
                continue
            try:
                spec = self.runners.spec_for(**TestSettings.of(item, self.factories).overrides)
            except SpecError:
                continue  # the test fails at setup, saying why
            self.needs[item] = [(name, spec) for name in fixtures]
            self.remaining.update(self.needs[item])

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None):
        try:
            return (yield)
        finally:
            for key in self.needs.pop(item, ()):
                self.remaining[key] -= 1
                if self.remaining[key] == 0:
                    self.services.stop_early(*key)
