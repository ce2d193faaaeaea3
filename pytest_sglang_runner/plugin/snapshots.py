"""Golden files (`snapshots.SnapshotStore`, one per session): the ``sglang_snapshot`` fixture,
``--sglang-snapshot-update``, and the end-of-run report of entries no test asked for.

The two module-level hooks carry pytest's names in ``specname``, so that the package `plugin`
can re-export them beside `configure`'s ``pytest_addoption`` and ``pytest_configure``; the rest
hang on `SnapshotBookkeeping`, registered at configure as `configure` registers its helpers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..errors import SGLangRunnerError
from ..runner.plan import BuildPlan
from ..sglang_compat.process import installed_version
from ..snapshots import SNAPSHOT_DIR, UPDATE_OPTION, Snapshot, SnapshotKey, SnapshotStore, model_fingerprint
from .fixtures import fail_setup, settings_for
from .keys import factory_key

snapshots_key = pytest.StashKey[SnapshotStore]()
WORKER_OUTPUT = "sglang_snapshots"


@pytest.hookimpl(specname="pytest_addoption")
def pytest_addoption_snapshots(parser: pytest.Parser) -> None:
    parser.getgroup("sglang-runner").addoption(
        UPDATE_OPTION,
        action="store_true",
        default=False,
        help="write the sglang_snapshot entries that are missing or no longer match, and delete unused ones",
    )
    parser.addini(
        "sglang_snapshot_dir",
        "where sglang_snapshot keeps a module's golden file, relative to the test file's directory",
        default=SNAPSHOT_DIR,
    )


@pytest.hookimpl(specname="pytest_configure")
def pytest_configure_snapshots(config: pytest.Config) -> None:
    directory = config.getini("sglang_snapshot_dir")
    if not directory or Path(directory).is_absolute():
        raise pytest.UsageError(
            f"sglang_snapshot_dir = {directory!r}: give a directory relative to each test file's, e.g. {SNAPSHOT_DIR}_gpu"
        )
    store = SnapshotStore(config.rootpath, directory, update=config.getoption("sglang_snapshot_update"))
    config.stash[snapshots_key] = store
    config.pluginmanager.register(SnapshotBookkeeping(store), "sglang-runner-snapshots")


def snapshot_key(plan: BuildPlan) -> SnapshotKey:
    """The key a test's recordings carry: its runner's model, SGLang version, device and dtype."""
    if plan.device == "cpu":
        device = "cpu"
    else:
        import torch

        device = torch.cuda.get_device_name(plan.gpu_ids[0])
    return SnapshotKey(model_fingerprint(plan.model_path), installed_version(), device, plan.dtype)


@pytest.fixture
def sglang_snapshot(request: pytest.FixtureRequest) -> Snapshot:
    """``sglang_snapshot.assert_match(generations, name="greedy", **rules)``: this test's golden
    entries, keyed by its runner's config (`snapshots.Snapshot`)."""
    factory = request.config.stash[factory_key]
    try:
        spec = factory.spec_for(**settings_for(request).overrides)
    except SGLangRunnerError as exc:
        fail_setup(request, exc)
    return request.config.stash[snapshots_key].snapshot(request.node.nodeid, lambda: snapshot_key(factory.plan(spec)))


class SnapshotBookkeeping:
    """Tells the store what was collected and how each test ended; on an xdist worker sends that
    to the controller, which reports (and under ``--sglang-snapshot-update`` deletes) the unused
    entries once every worker is done."""

    def __init__(self, store: SnapshotStore):
        self.store = store

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        self.store.collect(item.nodeid)  # deselected ones too: a test left out by -k or -m still exists

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Modules collected in part: named with ``path::test``, or all of them under ``--lf``."""
        config = session.config
        named = [config.invocation_params.dir / arg.partition("::")[0] for arg in config.args if "::" in arg]
        last_failed = [item.path for item in session.items] if config.getoption("lf", False) else []
        for path in named + last_failed:
            self.store.collected_in_part(path)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed or (report.when == "call" and report.passed):
            self.store.outcome(report.nodeid, passed=report.passed)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        if WORKER_OUTPUT in getattr(node, "workeroutput", {}):
            self.store.merge(node.workeroutput[WORKER_OUTPUT])

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        config = session.config
        if hasattr(config, "workerinput"):
            config.workeroutput[WORKER_OUTPUT] = self.store.state()
        else:
            self.store.finish()

    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config) -> None:
        for line in self.store.summary(config.rootpath):
            terminalreporter.write_line(line)
