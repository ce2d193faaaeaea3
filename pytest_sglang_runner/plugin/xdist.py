"""pytest-xdist: loadgroup by default, ``-n auto`` as many workers as the GPUs hold, ``xdist_group``
honoured on pytest 9.2 with node ids that stay plain, and the workers' build records brought back
for the summary."""

from __future__ import annotations

import os

import pytest

from .. import devices
from ..errors import SpecError
from .settings import spec_from_config

CONFIG_GROUP_PREFIX = "sglang-config-"  # the kit's xdist groups: one per non-default config


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config):
    """With ``-n`` and no ``--dist``, xdist's loadgroup: each non-default config runs on one
    worker (its ``xdist_group``), so it is built once; default-config tests spread as usual.
    Runs before xdist's own ``pytest_cmdline_main``, which resolves ``-n auto`` (`GpuWorkerCount`)."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no":
        config.option.dist = "loadgroup"
    if getattr(config.option, "numprocesses", None) in ("auto", "logical"):
        config.pluginmanager.register(GpuWorkerCount(), "sglang-runner-xdist-auto")
    return (yield)


class GpuWorkerCount:
    """``-n auto`` / ``-n logical`` on CUDA: as many workers as the GPUs hold the run's TP groups
    (`devices.auto_workers`), not one per CPU core, which the GPU check would refuse on a machine
    with more cores than GPUs. On the CPU, and where ``PYTEST_XDIST_AUTO_NUM_WORKERS`` is set,
    xdist's own count stands. Registered in ``pytest_cmdline_main``: the plugin's ``pytest_configure``
    comes after xdist asked for the count."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_auto_num_workers(self, config: pytest.Config) -> int | None:
        if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
            return None
        try:
            spec = spec_from_config(config)
        except SpecError:  # pytest_configure reports it as a usage error
            return None
        return devices.auto_workers(spec.device, spec.tp)


class XdistSupport:
    """Tells the workers the distribution mode, makes their xdist_group marks count, and collects
    their build records for the summary."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        node.workerinput["sglang_loadgroup"] = node.config.option.dist == "loadgroup"

    @pytest.hookimpl(wrapper=True)
    def pytest_collection_finish(self, session: pytest.Session):
        """xdist (3.8) groups a worker's tests by the ids it sends when collection finishes, and
        marks a group by renaming ``item._nodeid`` to ``NODEID@GROUP``, which pytest 9.2 no longer
        reads (its ids live in ``item._id``). So on a loadgroup worker the ids carry their group
        only while that hook sends them: reports, ``--lf``, ``--deselect`` and copied ids keep the
        plain node id. Every ``xdist_group`` counts, the kit's and the project's own."""
        config = session.config
        if not (hasattr(config, "workerinput") and getattr(config.option, "loadgroup", False)):
            return (yield)
        plain = {}
        for item in session.items:
            group = _group_of(item)
            if group and hasattr(item, "_id") and not item.nodeid.endswith(f"@{group}"):
                from _pytest.nodes import coerce_node_id

                plain[item] = item._id
                item._id = coerce_node_id(f"{item.nodeid}@{group}")
        try:
            return (yield)
        finally:
            for item, node_id in plain.items():
                item._id = node_id

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        builds = getattr(node, "workeroutput", {}).get("sglang_runner_builds", [])
        config = node.config
        config._sglang_worker_builds = getattr(config, "_sglang_worker_builds", []) + builds


def _group_of(item: pytest.Item) -> str:
    """The group xdist's loadgroup gives a test: its ``xdist_group`` names, sorted, joined by ``_``."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return "_".join(sorted(names))
