"""What the terminal shows: the header names the installed SGLang; while an Engine or server
starts (half a minute or more on CPU), a line per phase says what it waits for; the summary has
one line per built config with its resolved dtype, attention backend and TP size, and its build
times, and one per Engine or server config with its start and stop times."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Callable

import pytest

from ..errors import UnsupportedSGLang
from ..services.factory import describe
from ..sglang_compat.process import installed_version
from .keys import factory_key, services_key


def pytest_report_header(config: pytest.Config) -> str:
    try:
        version = f"SGLang {installed_version()}"
    except UnsupportedSGLang:
        version = "SGLang not installed"
    return f"sglang-runner: {version}; {config.stash[factory_key].default_spec.describe()}"


def progress_writer(config: pytest.Config) -> Callable[[str], None]:
    """``sglang-runner: ...`` lines on the terminal as they come, past pytest's output capture (as
    ``--setup-show`` writes), so a start of a minute is not a minute of silence; none under
    ``-q``. An xdist worker has no terminal of its own: its lines go to its stderr, each on a line
    of its own with the worker's id."""

    def write(text: str) -> None:
        if config.get_verbosity() < 0:
            return
        line = f"sglang-runner: {text}"
        capture = config.pluginmanager.get_plugin("capturemanager")
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if reporter is not None and not hasattr(config, "workerinput"):
                reporter.write_line(line)
            else:  # the controller prints it among its progress dots: a line of its own, named
                worker = getattr(config, "workerinput", {}).get("workerid")
                sys.stderr.write(f"\n[{worker}] {line}\n" if worker else f"{line}\n")
                sys.stderr.flush()

    return write


def _seconds(times: list[float]) -> str:
    if len(times) > 6:  # a cycle test's hundred builds: the first, then the spread of the rest
        rest = sorted(times[1:])
        return f"{times[0]:.1f}, then {rest[0]:.1f}-{rest[-1]:.1f} (median {rest[len(rest) // 2]:.1f})"
    return ", ".join(f"{t:.1f}" for t in times)


def _count(times: list[float], what: str) -> str:
    return f"{len(times)} {what}{'s' if len(times) != 1 else ''} in {_seconds(times)} s"


def _times(records: list[dict]) -> str:
    """A runner config's builds; an Engine's or server's starts, failed starts and stops."""
    if not records[0].get("service"):
        return _count([r["seconds"] for r in records], "build")
    started = [r["seconds"] for r in records if not r["failed"]]
    failed = [r["seconds"] for r in records if r["failed"]]
    stops = [r["stop_seconds"] for r in records if not r["failed"] and r["stop_seconds"] is not None]
    parts = [_count(started, "start")] if started else []
    parts += [_count(failed, "failed start")] if failed else []
    parts += [_count(stops, "stop")] if stops else []
    freed = [r["freed_mib"] for r in records if r.get("freed_mib") is not None]
    parts += [f"stopped after its last test, {freed[-1]:.0f} MiB freed"] if freed else []
    return ", ".join(parts)


def build_lines(records) -> list[str]:
    """One line per config: the runner builds of each config, then each Engine or server config's
    starts. A config is everything in its spec (`other_settings` included), so two never merge."""
    by_config: dict[tuple, list[dict]] = {}
    for r in records:
        by_config.setdefault((r["sglang_version"], describe(r)), []).append(r)
    ordered = sorted(by_config.items(), key=lambda item: bool(item[1][0].get("service")))  # runner lines first
    return [f"sglang-runner: SGLang {version} {config}: {_times(rs)}" for (version, config), rs in ordered]


def _records(config: pytest.Config) -> list[dict]:
    return [dataclasses.asdict(r) for r in (*config.stash[factory_key].records, *config.stash[services_key].records)]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The Engine and server stop here, after the session's fixtures and before the summary, so
    that it can say how long that took (the config's cleanup stops them too, when the session did
    not get this far)."""
    config = session.config
    config.stash[services_key].close()
    if hasattr(config, "workeroutput"):
        config.workeroutput["sglang_runner_builds"] = _records(config)  # the services' too


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    for line in build_lines(_records(config) + getattr(config, "_sglang_worker_builds", [])):
        terminalreporter.write_line(line)
