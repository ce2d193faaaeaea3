"""pytest hooks and fixtures: wiring only; the work is in `RunnerFactory` (lifecycle.py).

The factory is built from the options in `pytest_configure`, its cleanup registered once, and
the fixtures ask it for the runner of the current test's config (the `sglang` marker's
overrides on top of the command line and ini file). Nothing imports SGLang or torch until a
test asks for a runner.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import traceback
from pathlib import Path

import pytest

from . import devices, ports
from .lifecycle import LiveRunner, RunnerBuildError, RunnerFactory
from .models.embedded import models_cache_dir
from .options import OPTIONS, RunnerSpec, SpecError, spec_from_values
from .sglang_compat import UnsupportedSGLang, installed_version

factory_key = pytest.StashKey[RunnerFactory]()
SETUP_ERRORS = (SpecError, RunnerBuildError, UnsupportedSGLang)

# Tests that ask for any of these build (or reuse) a runner: ordered by config, marked sglang_runner.
RUNNER_FIXTURES = frozenset({"runner", "sglang_live", "sglang_forward", "runner_factory"})

MARKERS = (
    "sglang(**overrides): build this test's runner with these settings (RunnerSpec fields such as "
    "tp=2, dtype='bfloat16', model=PATH, or any ServerArgs field)",
    "sglang_runner: set by the kit on every test that uses a runner fixture (select with -m)",
    "gpu(n=1): skip unless at least n CUDA GPUs are visible",
    "mezo_full: the MeZO paper setting (needs --sglang-model roberta-large and --sst2-dir)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sglang-runner", "SGLang ModelRunner fixtures (pytest-sglang-runner)")
    for option in OPTIONS:
        group.addoption(
            option.flag,
            dest=option.ini,
            action="append" if option.repeatable else "store",
            default=None,
            metavar=option.metavar,
            help=option.help,
        )
        parser.addini(option.ini, option.help, type="linelist" if option.repeatable else "string", default=None)
    group.addoption(
        "--sglang-clear-cache", action="store_true", default=False, help="delete the kit's cached embedded models first (they are written again)"
    )
    group.addoption(
        "--sglang-skip", action="store_true", default=None, help="skip every test that uses a runner (e.g. on machines without SGLang)"
    )
    parser.addini("sglang_skip", "skip every test that uses a runner", type="bool", default=False)
    group.addoption("--sst2-dir", dest="sst2_dir", default=None, metavar="DIR", help="SST-2 data directory (GLUE TSV or MeZO k-shot layout)")
    parser.addini("sst2_dir", "SST-2 data directory (GLUE TSV or MeZO k-shot layout)", default=None)


def spec_from_config(config: pytest.Config) -> RunnerSpec:
    """Command line over ini key over default."""

    def value(option):
        given = config.getoption(option.ini)
        return given if given is not None else (config.getini(option.ini) or None)

    return spec_from_values(value)


def _check_server_args(spec: RunnerSpec) -> None:
    """Unknown or mistyped --sglang-arg fields (and attention backends) fail now, against the ServerArgs schema an earlier build
    of this SGLang version saved; with none saved yet, at the first build (importing SGLang costs
    seconds, and a run may have no runner test at all)."""
    if spec.server_args or spec.attention_backend:
        from .sglang_compat.server_args import cached_schema, check_attention_backend, typed_server_args

        schema = cached_schema()
        if schema is not None:
            typed_server_args(dict(spec.server_args), schema)
            if spec.attention_backend:
                check_attention_backend(spec.attention_backend, schema)


def _xdist_workers(config: pytest.Config) -> int:
    numprocesses = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    return numprocesses if isinstance(numprocesses, int) else 0


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    try:
        spec = spec_from_config(config)
        _check_server_args(spec)
        if not hasattr(config, "workerinput") and _xdist_workers(config) > 0:
            devices.check_gpus_suffice(spec.device, _xdist_workers(config), spec.tp)
    except SpecError as exc:
        raise pytest.UsageError(f"{exc}") from None
    if config.getoption("sglang_clear_cache") and not hasattr(config, "workerinput"):
        shutil.rmtree(models_cache_dir(), ignore_errors=True)
    factory = RunnerFactory(spec, cache_root=models_cache_dir(), worker_index=devices.xdist_worker_index())
    config.stash[factory_key] = factory
    config.add_cleanup(ports.sweep_stale_lock_files)  # runs after factory.close: files of crashed peers too
    config.add_cleanup(lambda: _close_at_session_end(factory))
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistBuildReports(), "sglang-runner-xdist")


def _close_at_session_end(factory: RunnerFactory) -> None:
    """Ctrl-C while the runner is torn down still stops its peers and frees its ports (teardown's
    ``finally``), then ends the run as pytest ends an interrupted one: exit code 2, no traceback."""
    try:
        factory.close()
    except KeyboardInterrupt:
        sys.stderr.write("sglang-runner: interrupted while tearing the runner down (TP peers stopped, ports released)\n")
        raise SystemExit(pytest.ExitCode.INTERRUPTED) from None


def _marker_text(node) -> str:
    """The test's ``sglang`` markers as written, closest last (for error messages)."""
    calls = []
    for marker in reversed(list(node.iter_markers("sglang"))):
        arguments = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
        calls.append(f"@pytest.mark.sglang({', '.join(arguments)})")
    return " + ".join(calls)


def _marker_overrides(node) -> dict:
    overrides: dict = {}
    for marker in reversed(list(node.iter_markers("sglang"))):  # closest marker wins
        if marker.args:
            raise SpecError("@pytest.mark.sglang takes keyword arguments only, e.g. sglang(tp=2)")
        overrides.update(marker.kwargs)
    return overrides


def _fail_setup(request: pytest.FixtureRequest, exc: Exception):
    """A bad config or a failed build fails this test alone, in a few lines naming the marker;
    SGLang's traceback, when there is one, only with -v."""
    markers = _marker_text(request.node)
    text = f"{exc}" + (f" [{markers}]" if markers else "")
    if exc.__cause__ is not None:
        if request.config.getoption("verbose") > 0:
            text += "\n\nCaused by:\n" + "".join(traceback.format_exception(exc.__cause__))
        else:
            text += "\n(the cause's full traceback: run pytest with -v)"
    raise pytest.fail.Exception(text, pytrace=False) from None  # not the chain we are handling


def _sort_key(item: pytest.Item) -> tuple[bool, str]:
    """The default config first, then each marker's config together."""
    try:
        overrides = _marker_overrides(item)
    except SpecError:
        return (False, "")  # the test reports its marker when it runs; collection goes on
    return (bool(overrides), repr(sorted(overrides.items())))


def _uses_runner(item: pytest.Item) -> bool:
    return not RUNNER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def _gpu_skip_reason(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return None
    needed = marker.kwargs.get("n", marker.args[0] if marker.args else 1)
    found = devices.cuda_device_count()  # imports torch: only when a test asks for GPUs
    return f"needs {needed} CUDA GPU(s), found {found}" if found < needed else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the runner tests and group them by config (so each config is built once), in the
    places runner tests already held: other tests keep their order. Skips are added as marks, so
    pytest reports them at the test."""
    skip_all = config.getoption("sglang_skip") or config.getini("sglang_skip")
    slots = []
    for index, item in enumerate(items):
        reason = _gpu_skip_reason(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        if _uses_runner(item):
            item.add_marker("sglang_runner")
            if skip_all:
                item.add_marker(pytest.mark.skip(reason="--sglang-skip: tests that use an SGLang runner are skipped"))
            slots.append(index)
    for index, item in zip(slots, sorted((items[i] for i in slots), key=_sort_key)):
        items[index] = item


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


def _build_lines(records) -> list[str]:
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
    for line in _build_lines(records):
        terminalreporter.write_line(line)


class XdistBuildReports:
    """Collects the workers' build records on the controller for the summary line."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        builds = getattr(node, "workeroutput", {}).get("sglang_runner_builds", [])
        config = node.config
        config._sglang_worker_builds = getattr(config, "_sglang_worker_builds", []) + builds


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def runner_factory(request: pytest.FixtureRequest) -> RunnerFactory:
    """This process's RunnerFactory. Only one runner lives per process: `get()` with another
    config tears the current runner down first."""
    return request.config.stash[factory_key]


@pytest.fixture
def sglang_live(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> LiveRunner:
    """The live runner for this test's config, with its KV pool empty."""
    try:
        live = runner_factory.get(**_marker_overrides(request.node))
    except SETUP_ERRORS as exc:
        _fail_setup(request, exc)
    live.forward.release()
    return live


@pytest.fixture
def runner(sglang_live: LiveRunner):
    """A fully initialised SGLang ModelRunner; built once per process and config, reused by every test."""
    return sglang_live.model_runner


@pytest.fixture
def sglang_forward(sglang_live: LiveRunner):
    """Token lists or texts in, logits / hidden states / embeddings out (a `Forward`)."""
    return sglang_live.forward


@pytest.fixture
def sglang_model_path(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> str:
    """The local directory of this test's model (the embedded model is written on first use)."""
    try:
        return runner_factory.model_path(runner_factory.spec_for(**_marker_overrides(request.node)))
    except SETUP_ERRORS as exc:
        _fail_setup(request, exc)


@pytest.fixture
def hf_model(request: pytest.FixtureRequest, runner_factory: RunnerFactory, sglang_model_path: str):
    """The same checkpoint in HF transformers (fp32, eval), for cross-checks; cached per model."""
    return runner_factory.hf_model(sglang_model_path)


@pytest.fixture
def hf_runner(request: pytest.FixtureRequest, runner_factory: RunnerFactory, sglang_model_path: str):
    """The test's checkpoint in HF transformers, in the runner's dtype and on its device, with the
    runner's method names and result types (`generate`, `next_token_logits`); cached per model."""
    try:
        return runner_factory.hf_runner(runner_factory.spec_for(**_marker_overrides(request.node)), sglang_model_path)
    except SETUP_ERRORS as exc:
        _fail_setup(request, exc)


@pytest.fixture
def sst2_dir(request: pytest.FixtureRequest) -> Path | None:
    """--sst2-dir (relative to the working directory) or ini sst2_dir (relative to the rootdir), or None."""
    config = request.config
    if config.getoption("sst2_dir"):
        return Path(os.path.expanduser(config.getoption("sst2_dir")))
    value = config.getini("sst2_dir")
    return config.rootpath / os.path.expanduser(value) if value else None
