"""What the terminal shows: the header names the installed SGLang; the summary has one line per
built config with its resolved dtype, attention backend and TP size, and its build times."""

from __future__ import annotations

import dataclasses

import pytest

from ..errors import UnsupportedSGLang
from ..sglang_compat.process import installed_version
from .keys import factory_key


def pytest_report_header(config: pytest.Config) -> str:
    try:
        version = f"SGLang {installed_version()}"
    except UnsupportedSGLang:
        version = "SGLang not installed"
    return f"sglang-runner: {version}; {config.stash[factory_key].default_spec.describe()}"


def _seconds(times: list[float]) -> str:
    if len(times) > 6:  # a cycle test's hundred builds: the first, then the spread of the rest
        rest = sorted(times[1:])
        return f"{times[0]:.1f}, then {rest[0]:.1f}-{rest[-1]:.1f} (median {rest[len(rest) // 2]:.1f})"
    return ", ".join(f"{t:.1f}" for t in times)


def build_lines(records) -> list[str]:
    """One line per config built: what it was, and how long its builds took."""
    by_config: dict[tuple, list[float]] = {}
    for r in records:
        config = (r["sglang_version"], r["model"], r["device"], r["dtype"], r["attention_backend"], r["tp"])
        by_config.setdefault(config, []).append(r["seconds"])
    return [
        f"sglang-runner: SGLang {version} built {model} on {device}, {dtype}, {backend} attention, tp {tp}: "
        f"{len(times)} build{'s' if len(times) > 1 else ''} in {_seconds(times)} s"
        for (version, model, device, dtype, backend, tp), times in by_config.items()
    ]


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workeroutput"):
        config.workeroutput["sglang_runner_builds"] = [dataclasses.asdict(r) for r in config.stash[factory_key].records]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    records = [dataclasses.asdict(r) for r in config.stash[factory_key].records]
    records += getattr(config, "_sglang_worker_builds", [])
    for line in build_lines(records):
        terminalreporter.write_line(line)
