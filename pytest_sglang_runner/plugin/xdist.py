"""pytest-xdist: loadgroup by default, the kit's config groups honoured on pytest 9.2, and the
workers' build records brought back for the summary."""

from __future__ import annotations

import pytest

CONFIG_GROUP_PREFIX = "sglang-config-"  # the kit's xdist groups: one per non-default config


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config):
    """With ``-n`` and no ``--dist``, xdist's loadgroup: each non-default config runs on one
    worker (its ``xdist_group``), so it is built once; default-config tests spread as usual."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no":
        config.option.dist = "loadgroup"
    return (yield)


class XdistSupport:
    """Tells the workers the distribution mode, makes their xdist_group marks count, and collects
    their build records for the summary."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        node.workerinput["sglang_loadgroup"] = node.config.option.dist == "loadgroup"

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """xdist (3.8) groups by renaming ``item._nodeid`` to ``NODEID@GROUP``, which pytest 9.2
        no longer reads (its ids live in ``item._id``): the kit's groups get the suffix there."""
        if not getattr(config.option, "loadgroup", False):
            return
        for item in items:
            marker = item.get_closest_marker("xdist_group")
            group = marker.kwargs.get("name", "") if marker is not None else ""
            if group.startswith(CONFIG_GROUP_PREFIX) and "@" not in item.nodeid and hasattr(item, "_id"):
                from _pytest.nodeid import NodeId

                item._id = NodeId.parse(f"{item.nodeid}@{group}")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        builds = getattr(node, "workeroutput", {}).get("sglang_runner_builds", [])
        config = node.config
        config._sglang_worker_builds = getattr(config, "_sglang_worker_builds", []) + builds
