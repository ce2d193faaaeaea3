"""Where the plugin keeps its per-run objects: on the pytest config's stash, under these keys."""

from __future__ import annotations

import pytest

from ..ab import OutputCache
from ..runner.factory import RunnerFactory
from ..services import ServiceFactory
from .guard import RunnerGuard
from .settings import FactoryFixtures

factory_key = pytest.StashKey[RunnerFactory]()
services_key = pytest.StashKey[ServiceFactory]()
factory_fixtures_key = pytest.StashKey[FactoryFixtures]()
compare_cache_key = pytest.StashKey[OutputCache]()  # sglang_compare's outputs, per config and prompt set
guard_key = pytest.StashKey[RunnerGuard]()
