"""The MeZO suite's pytest options, off unless asked for: ``-p pytest_sglang_runner.mezo_plugin``
(or ``pytest_plugins = ["pytest_sglang_runner.mezo_plugin"]`` in the root conftest), so
``--sst2-dir`` and ``mezo_full`` stay out of other projects' ``--help`` and ``--markers``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SST2_HELP = "SST-2 data directory (GLUE TSV or MeZO k-shot layout)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sglang-runner")
    group.addoption("--sst2-dir", dest="sst2_dir", default=None, metavar="DIR", help=SST2_HELP)
    parser.addini("sst2_dir", SST2_HELP, default=None)


MARKERS = (
    "mezo_full: the long MeZO runs: the paper setting (needs --sglang-model roberta-large and --sst2-dir) "
    "and the decoder real run (needs a GPU and the optional packages of docs/mezo.md)",
)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)


@pytest.fixture
def sst2_dir(request: pytest.FixtureRequest) -> Path | None:
    """--sst2-dir (relative to the working directory) or ini sst2_dir (relative to the rootdir), or None."""
    config = request.config
    if config.getoption("sst2_dir"):
        return Path(os.path.expanduser(config.getoption("sst2_dir")))
    value = config.getini("sst2_dir")
    return config.rootpath / os.path.expanduser(value) if value else None
