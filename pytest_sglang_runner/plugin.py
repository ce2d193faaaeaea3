"""pytest hooks and fixtures: wiring only; the work is in `RunnerFactory` (lifecycle.py).

The factory is built from the options in `pytest_configure`, its cleanup registered once, and
the fixtures ask it for the runner of the current test's config (the `sglang` marker's
overrides on top of the command line and ini file). Nothing imports SGLang or torch until a
test asks for a runner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
import traceback
from typing import TYPE_CHECKING

import pytest

from . import devices, ports, ranks, timeouts
from .factories import overrides_of
from .lifecycle import LiveRunner, RunnerBuildError, RunnerFactory
from .models.embedded import models_cache_dir
from .options import OPTIONS, RunnerSpec, SpecError, spec_from_values
from .services import EngineService, ServerService, ServiceError, ServiceFactory
from .sglang_compat import UnsupportedSGLang, installed_version

if TYPE_CHECKING:  # neither is imported before a test asks for a runner
    from sglang.srt.model_executor.model_runner import ModelRunner
    from transformers import PreTrainedModel

    from .forward import Forward
    from .reference import HFRunner

factory_key = pytest.StashKey[RunnerFactory]()
services_key = pytest.StashKey[ServiceFactory]()
SETUP_ERRORS = (SpecError, RunnerBuildError, UnsupportedSGLang, timeouts.SGLangTimeout, ServiceError)

# Tests that ask for any of these, or for a factories.sglang_runner fixture, build (or reuse) a
# runner, an Engine or a server: ordered and xdist-grouped by config, marked sglang_runner.
RUNNER_FIXTURES = frozenset({"runner", "sglang_live", "sglang_forward", "sglang_rank", "runner_factory", "sglang_engine", "sglang_server"})
CONFIG_GROUP_PREFIX = "sglang-config-"  # the kit's xdist groups: one per non-default config
TEST_CONFIG_FIXTURES = frozenset({"runner", "sglang_live", "sglang_forward", "sglang_rank"})  # the test's config (no factory fixture)

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
        "--sglang-clear-cache", action="store_true", default=False, help="delete the kit's cached embedded models first (they are written again)"
    )
    group.addoption(
        "--sglang-skip", action="store_true", default=None, help="skip every test that uses a runner, Engine or server (e.g. on machines without SGLang)"
    )
    parser.addini("sglang_skip", "skip every test that uses a runner, Engine or server", type="bool", default=False)
    parser.addini("sglang_gpu_alias", "honour the old gpu(n) marker as sglang_gpu(n)", type="bool", default=True)


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
    for marker in MARKERS + ((GPU_ALIAS_MARKER,) if config.getini("sglang_gpu_alias") else ()):
        config.addinivalue_line("markers", marker)
    try:
        spec = spec_from_config(config)
        limit = timeouts.limit_from_config(config)
        _check_server_args(spec)
        if not hasattr(config, "workerinput") and _xdist_workers(config) > 0:
            devices.check_gpus_suffice(spec.device, _xdist_workers(config), spec.tp)
    except SpecError as exc:
        raise pytest.UsageError(f"{exc}") from None
    if config.getoption("sglang_clear_cache") and not hasattr(config, "workerinput"):
        shutil.rmtree(models_cache_dir(), ignore_errors=True)
    factory = RunnerFactory(spec, cache_root=models_cache_dir(), worker_index=devices.xdist_worker_index(), project_root=config.rootpath, timeout_s=limit)
    config.stash[factory_key] = factory
    config.stash[services_key] = services = ServiceFactory(factory)
    config.add_cleanup(ports.sweep_stale_lock_files)  # runs after factory.close: files of crashed peers too
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
        sys.stderr.write("sglang-runner: interrupted while tearing the runner down (TP peers stopped, ports released)\n")
        raise SystemExit(pytest.ExitCode.INTERRUPTED) from None
    except timeouts.SGLangTimeout as exc:  # the stacks are on stderr already
        sys.stderr.write(f"sglang-runner: {exc} (TP peers stopped, ports released)\n")
        raise SystemExit(pytest.ExitCode.TESTS_FAILED) from None


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


def _factory_fixtures(item) -> list[tuple[str, dict]]:
    """The factories.sglang_runner fixtures this test uses (directly or through other fixtures)."""
    info = getattr(item, "_fixtureinfo", None)
    found = []
    for name in getattr(item, "fixturenames", ()):
        definitions = info.name2fixturedefs.get(name) if info is not None else None
        overrides = overrides_of(definitions[-1].func) if definitions else None
        if overrides is not None:
            found.append((name, overrides))
    return found


def _test_overrides(item) -> dict:
    """This test's runner settings: its factory fixture's, then its sglang markers' on top."""
    named = _factory_fixtures(item)
    plain = sorted(TEST_CONFIG_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if len({repr(sorted(o.items())) for _, o in named}) > 1 or (named and plain):
        names = ", ".join([n for n, _ in named] + plain)
        raise SpecError(
            f"this test asks for runners of different configs ({names}); one runner lives per process, so a test "
            "uses one config (a factory fixture's LiveRunner has .model_runner and .forward)"
        )
    return {**(named[0][1] if named else {}), **_marker_overrides(item)}


def _fail_setup(request: pytest.FixtureRequest, exc: Exception):
    """A bad config or a failed build fails this test alone, in a few lines naming the marker;
    SGLang's traceback, when there is one, only with -v."""
    markers = _marker_text(request.node)
    text = f"{exc}" + (f" [{markers}]" if markers else "")
    verbose = request.config.getoption("verbose") > 0
    if exc.__cause__ is not None:
        if verbose:
            text += "\n\nCaused by:\n" + "".join(traceback.format_exception(exc.__cause__))
        else:
            text += "\n(the cause's full traceback: run pytest with -v)"
    build_log = request.config.stash[factory_key].last_build_log
    if verbose and build_log and isinstance(exc, RunnerBuildError):
        text += "\n\nSGLang's log during the build:\n" + build_log
    raise pytest.fail.Exception(text, pytrace=False) from None  # not the chain we are handling


def _config_key(item: pytest.Item, factory: RunnerFactory) -> str | None:
    """The runner config this test uses, as text; None for the default config (or a bad one:
    the test reports it when it runs, collection goes on)."""
    try:
        spec = factory.spec_for(**_test_overrides(item))
    except SpecError:
        return None
    return None if spec == factory.default_spec else repr(spec)


def _every_rank(item: pytest.Item) -> bool:
    try:
        return bool(_marker_overrides(item).get("every_rank"))
    except SpecError:
        return False  # the bad marker fails the test at setup


def _rank_arguments(item: pytest.Function) -> dict[str, tuple[str, object]]:
    """What an every-rank test's peers pass for each argument: their own runner fixtures, or the
    test's parameter values; any other fixture exists on rank 0 only."""
    arguments = {}
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in item._fixtureinfo.argnames:
        if name in ranks.RANK_FIXTURES:
            arguments[name] = ("fixture", name)
        elif name in params:
            arguments[name] = ("value", params[name])
        else:
            raise SpecError(
                f"every-rank test: fixture {name!r} exists on rank 0 only; on every rank a test can take "
                f"{', '.join(sorted(ranks.RANK_FIXTURES))} and its parametrize values"
            )
    return arguments


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """An every-rank test (``@pytest.mark.sglang(tp=N, every_rank=True)``) runs here on rank 0 and
    at once in each peer against its own runner; it passes only if every rank passes."""
    live = pyfuncitem.config.stash[factory_key].live
    if not _every_rank(pyfuncitem) or live is None or live.peers is None:
        return (yield)
    try:
        arguments = _rank_arguments(pyfuncitem)
    except SpecError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    test = ranks.FunctionRef.of(pyfuncitem.obj)
    with live.every_rank(ranks.FunctionRef.of(ranks.call_test_function), (test, arguments), {}) as call:
        yield
    failures = ranks.peer_failures(call.outcomes)
    if failures:
        rank0 = call.outcomes[0]
        also = f"\n(rank 0: {rank0[1]})" if rank0[0] == "failed" else ""
        raise pytest.fail.Exception("\n".join(failures) + also, pytrace=False) from None
    if call.rank0_error is not None:
        raise call.rank0_error
    skipped = ranks.skips(call.outcomes)
    if skipped:
        raise pytest.skip.Exception("; ".join(skipped), _use_item_location=True)
    return None


def _uses_runner(item: pytest.Item) -> bool:
    return not RUNNER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())) or bool(_factory_fixtures(item))


def _gpu_marker(item: pytest.Item, alias: bool):
    marker = item.get_closest_marker("sglang_gpu")
    if marker is None and alias:
        marker = item.get_closest_marker("gpu")
        if marker is not None:
            item.warn(pytest.PytestDeprecationWarning("@pytest.mark.gpu(n) is now @pytest.mark.sglang_gpu(n); the old name still works"))
    return marker


def _gpu_skip_reason(item: pytest.Item, alias: bool) -> str | None:
    marker = _gpu_marker(item, alias)
    if marker is None:
        return None
    needed = marker.kwargs.get("n", marker.args[0] if marker.args else 1)
    found = devices.cuda_device_count()  # imports torch: only when a test asks for GPUs
    return f"needs {needed} CUDA GPU(s), found {found}" if found < needed else None


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config):
    """With ``-n`` and no ``--dist``, xdist's loadgroup: each non-default config runs on one
    worker (its ``xdist_group``), so it is built once; default-config tests spread as usual."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no":
        config.option.dist = "loadgroup"
    return (yield)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the runner tests and group them by config (so each config is built once), in the
    places runner tests already held: other tests keep their order. Skips are added as marks, so
    pytest reports them at the test."""
    factory = config.stash[factory_key]
    skip_all = config.getoption("sglang_skip") or config.getini("sglang_skip")
    gpu_alias = config.getini("sglang_gpu_alias")
    slots, keys = [], {}
    for index, item in enumerate(items):
        reason = _gpu_skip_reason(item, gpu_alias)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        if _uses_runner(item):
            item.add_marker("sglang_runner")
            if skip_all:
                item.add_marker(pytest.mark.skip(reason="--sglang-skip: tests that use an SGLang runner are skipped"))
            keys[item] = _config_key(item, factory)
            if keys[item] is not None:
                item.add_marker(pytest.mark.xdist_group(name=CONFIG_GROUP_PREFIX + _short_hash(keys[item])))
            slots.append(index)
    ordered = sorted((items[i] for i in slots), key=lambda item: (keys[item] is not None, keys[item] or ""))
    for index, item in zip(slots, ordered):
        items[index] = item


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


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


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def runner_factory(request: pytest.FixtureRequest) -> RunnerFactory:
    """This process's RunnerFactory. Only one runner lives per process: `get()` with another
    config tears the current runner down first."""
    return request.config.stash[factory_key]


def live_runner_for(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> LiveRunner:
    """The live runner of the requesting test's config, with its KV pool empty (also behind
    factories.sglang_runner fixtures)."""
    try:
        live = runner_factory.get(**_test_overrides(request.node))
    except SETUP_ERRORS as exc:
        _fail_setup(request, exc)
    live.forward.release()
    return live


def hf_runner_for(request: pytest.FixtureRequest, runner_factory: RunnerFactory, factory_overrides: dict | None = None) -> HFRunner:
    """The HF reference of the test's config, or of a factory fixture's (factories.hf_runner)."""
    node = request.node
    try:
        overrides = _test_overrides(node) if factory_overrides is None else {**factory_overrides, **_marker_overrides(node)}
        spec = runner_factory.spec_for(**overrides)
        return runner_factory.hf_runner(spec, runner_factory.model_path(spec))
    except SETUP_ERRORS as exc:
        _fail_setup(request, exc)


@pytest.fixture
def sglang_live(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> LiveRunner:
    """The live runner for this test's config, with its KV pool empty."""
    return live_runner_for(request, runner_factory)


@pytest.fixture
def runner(sglang_live: LiveRunner) -> ModelRunner:
    """A fully initialised SGLang ModelRunner; built once per process and config, reused by every test."""
    return sglang_live.model_runner


@pytest.fixture
def sglang_forward(sglang_live: LiveRunner) -> Forward:
    """Token lists or texts in, logits / hidden states / embeddings out (a `Forward`)."""
    return sglang_live.forward


@pytest.fixture
def sglang_rank(sglang_live: LiveRunner) -> ranks.RankContext:
    """This rank's place in the TP group: ``.rank``, ``.world_size``, ``.runner``, ``.forward``.
    Rank 0 here; in an every-rank test each peer gets its own."""
    return sglang_live.rank_context()


@pytest.fixture
def sglang_model_path(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> str:
    """The local directory of this test's model (the embedded model is written on first use)."""
    try:
        return runner_factory.model_path(runner_factory.spec_for(**_test_overrides(request.node)))
    except SETUP_ERRORS as exc:
        _fail_setup(request, exc)


@pytest.fixture
def hf_model(request: pytest.FixtureRequest, runner_factory: RunnerFactory, sglang_model_path: str) -> PreTrainedModel:
    """The same checkpoint in HF transformers (fp32, eval), for cross-checks; cached per model."""
    return runner_factory.hf_model(sglang_model_path)


@pytest.fixture
def hf_runner(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> HFRunner:
    """The test's checkpoint in HF transformers, in the runner's dtype and on its device, with the
    runner's method names and result types (`generate`, `next_token_logits`); cached per model."""
    return hf_runner_for(request, runner_factory)


def _service(request: pytest.FixtureRequest, start):
    try:
        return start(request.config.stash[services_key], **_test_overrides(request.node))
    except SETUP_ERRORS as exc:
        _fail_setup(request, exc)


@pytest.fixture
def sglang_engine(request: pytest.FixtureRequest) -> EngineService:
    """``sglang.Engine`` with this test's config, hosted in a process of its own (`EngineService`:
    ``encode``, ``generate``, ``call``); started once per session and config, again if it died."""
    return _service(request, ServiceFactory.engine)


@pytest.fixture
def sglang_server(request: pytest.FixtureRequest) -> ServerService:
    """SGLang's HTTP server with this test's config on a reserved 127.0.0.1 port, healthy
    (`ServerService`: ``base_url``, ``client``, ``embeddings``, ``completions``); started once per
    session and config, again if it died."""
    return _service(request, ServiceFactory.server)
