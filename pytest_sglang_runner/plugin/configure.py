"""The run's setup and cleanup: options and ini keys, markers, the factories on the config's
stash, and their cleanup registered once (as pytest's tmpdir plugin does for its factory)."""

from __future__ import annotations

import shutil
import sys

import pytest

from .. import devices, ports, timeouts
from ..errors import SpecError
from ..options import OPTIONS, RunnerSpec
from ..paths import models_cache_dir
from ..runner import RunnerFactory
from ..services import ServiceFactory
from ..sglang_compat import process
from .guard import RunnerGuard
from .keys import factory_fixtures_key, factory_key, guard_key, services_key
from .lifetimes import ServiceLifetimes
from .report import progress_writer
from .settings import FactoryFixtures, spec_from_config
from .xdist import XdistSupport

MARKERS = (
    "sglang(**overrides): build this test's runner with these settings (RunnerSpec fields such as "
    "tp=2, dtype='bfloat16', model=PATH, or any ServerArgs field); timeout=SECONDS bounds its build, forwards and "
    "teardown instead of --sglang-timeout, without a rebuild; every_rank=True runs the test body on every TP rank",
    "sglang_runner: set by the kit on every test that uses a runner, Engine or server fixture (select with -m)",
    "sglang_gpu(n=1): skip unless at least n CUDA GPUs are visible",
)
GPU_ALIAS_MARKER = "gpu(n=1): the kit's old name for sglang_gpu (ini sglang_gpu_alias = false frees the name)"


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
        "--sglang-clear-cache",
        action="store_true",
        default=False,
        help="delete the kit's cached embedded models first (they are written again)",
    )
    group.addoption(
        "--sglang-skip",
        action="store_true",
        default=None,
        help="skip every test that uses a runner, Engine or server (e.g. on machines without SGLang)",
    )
    group.addoption(
        "--sglang-pristine-weights",
        action="store_true",
        default=None,
        help="keep a host-memory copy of the runner's weights, to put back what a test changed without a rebuild",
    )
    parser.addini("sglang_skip", "skip every test that uses a runner, Engine or server", type="bool", default=False)
    parser.addini(
        "sglang_pristine_weights",
        "keep a copy of the runner's weights to restore after a test",
        type="bool",
        default=False,
    )
    parser.addini("sglang_gpu_alias", "honour the old gpu(n) marker as sglang_gpu(n)", type="bool", default=True)


def _check_server_args(spec: RunnerSpec) -> None:
    """Unknown or mistyped --sglang-arg fields (and attention backends) fail now, against the
    ServerArgs schema an earlier build of this SGLang version saved, or else the one read from
    SGLang's source (no attention backends there: those wait for the first build); importing
    SGLang to check costs seconds, and a run may have no runner test at all."""
    if spec.server_args or spec.attention_backend:
        from ..sglang_compat.server_args import check_attention_backend, startup_schema, typed_server_args

        schema = startup_schema()
        if schema is not None:
            typed_server_args(dict(spec.server_args), schema)
            if spec.attention_backend:
                check_attention_backend(spec.attention_backend, schema)


def _xdist_workers(config: pytest.Config) -> int:
    numprocesses = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    return numprocesses if isinstance(numprocesses, int) else 0


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS + ((GPU_ALIAS_MARKER,) if config.getini("sglang_gpu_alias") else ()):
        config.addinivalue_line("markers", marker)
    config.addinivalue_line("filterwarnings", process.SWIG_WARNING_FILTER)  # each test's, before the user's -W
    try:
        spec = spec_from_config(config)
        limit = timeouts.limit_from_config(config)
        _check_server_args(spec)
        if not hasattr(config, "workerinput") and _xdist_workers(config) > 0:
            # The run's TP; the TPs of markers and factory fixtures are known only to the workers,
            # which check them after their collection (collection._gpu_share).
            devices.check_gpus_suffice(spec.device, _xdist_workers(config), spec.tp)
        else:
            devices.check_device_at_startup(spec.device)
    except SpecError as exc:
        raise pytest.UsageError(f"{exc}") from None
    if config.getoption("sglang_clear_cache") and not hasattr(config, "workerinput"):
        shutil.rmtree(models_cache_dir(), ignore_errors=True)
    factory = RunnerFactory(
        spec,
        cache_root=models_cache_dir(),
        worker_index=devices.xdist_worker_index(),
        project_root=config.rootpath,
        timeout_s=limit,
        progress=progress_writer(config),
    )
    config.stash[factory_key] = factory
    config.stash[services_key] = services = ServiceFactory(factory, progress=factory.progress)
    config.stash[factory_fixtures_key] = factory_fixtures = FactoryFixtures()
    pristine = config.getoption("sglang_pristine_weights") or config.getini("sglang_pristine_weights")
    config.stash[guard_key] = guard = RunnerGuard(factory, keep_pristine=bool(pristine))
    config.pluginmanager.register(guard, "sglang-runner-guard")
    config.pluginmanager.register(
        ServiceLifetimes(services, factory, factory_fixtures), "sglang-runner-service-lifetimes"
    )
    config.pluginmanager.register(factory_fixtures, "sglang-runner-factory-fixtures")  # sees every conftest as it loads
    config.add_cleanup(ports.sweep_stale_lock_files)  # runs after factory.close: files of crashed peers too
    config.add_cleanup(process.ignore_swig_warnings)  # after every catch_warnings: holds at the interpreter's exit
    config.add_cleanup(lambda: _close_at_session_end(factory))
    config.add_cleanup(services.close)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistSupport(), "sglang-runner-xdist")
    if getattr(config, "workerinput", {}).get("sglang_loadgroup"):
        config.option.loadgroup = True  # workers parse the command line again: they miss pytest_cmdline_main's choice


def _close_at_session_end(factory: RunnerFactory) -> None:
    """Ctrl-C while the runner is torn down still stops its peers and frees its ports (teardown's
    ``finally``), then ends the run as pytest ends an interrupted one: exit code 2, no traceback.
    A teardown past the time limit does the same with exit code 1."""
    try:
        factory.close()
    except KeyboardInterrupt:
        sys.stderr.write(
            "sglang-runner: interrupted while tearing the runner down (TP peers stopped, ports released)\n"
        )
        raise SystemExit(pytest.ExitCode.INTERRUPTED) from None
    except timeouts.SGLangTimeout as exc:  # the stacks are on stderr already
        sys.stderr.write(f"sglang-runner: {exc} (TP peers stopped, ports released)\n")
        raise SystemExit(pytest.ExitCode.TESTS_FAILED) from None
