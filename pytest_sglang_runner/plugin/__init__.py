"""The pytest plugin (``pytest11`` entry point ``pytest_sglang_runner.plugin``): hooks and thin
fixtures; the work is in `runner.RunnerFactory` and `services.ServiceFactory`.

- `configure`: options, ini keys, markers; the factories built in ``pytest_configure`` and their
  cleanup registered once;
- `settings`: a test's settings as one value (factory fixture, markers, time limit, every-rank);
- `fixtures`: ``runner_factory``, ``sglang_live``, ``runner``, ``sglang_forward``, ``sglang_rank``,
  ``sglang_model_path``, ``hf_model``, ``hf_runner``, ``sglang_engine``, ``sglang_server``,
  ``tiny_checkpoint``, ``sglang_compare`` (two configs in one test, `ab`);
- `factories`: named fixtures for per-test configs (``factories.sglang_runner(...)``);
- `guard`: each runner test checked for what it left behind (weights, torch's globals, slots);
- `snapshots`: golden files (``sglang_snapshot``, ``--sglang-snapshot-update``, the unused report);
- `collection` / `every_rank` / `xdist` / `report`: ordering and grouping, the every-rank mode,
  pytest-xdist, the terminal.

May import anything of the kit; nothing of the kit imports this package. Nothing here imports
SGLang or torch until a test asks for a runner.
"""

from .collection import pytest_collection_modifyitems
from .configure import pytest_addoption, pytest_configure
from .every_rank import pytest_pyfunc_call
from .fixtures import (
    hf_model,
    hf_runner,
    runner,
    runner_factory,
    sglang_compare,
    sglang_engine,
    sglang_forward,
    sglang_live,
    sglang_model_path,
    sglang_rank,
    sglang_server,
    tiny_checkpoint,
)
from .keys import factory_key, services_key
from .report import pytest_report_header, pytest_sessionfinish, pytest_terminal_summary
from .settings import spec_from_config
from .snapshots import pytest_addoption_snapshots, pytest_configure_snapshots, sglang_snapshot, snapshots_key
from .xdist import pytest_cmdline_main

__all__ = [
    "factory_key",
    "hf_model",
    "hf_runner",
    "pytest_addoption",
    "pytest_addoption_snapshots",
    "pytest_cmdline_main",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_configure_snapshots",
    "pytest_pyfunc_call",
    "pytest_report_header",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "runner",
    "runner_factory",
    "services_key",
    "sglang_compare",
    "sglang_engine",
    "sglang_forward",
    "sglang_live",
    "sglang_model_path",
    "sglang_rank",
    "sglang_server",
    "sglang_snapshot",
    "snapshots_key",
    "tiny_checkpoint",
    "spec_from_config",
]
