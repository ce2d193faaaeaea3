"""The fixtures: thin, each asks a factory for one thing with the test's settings.

A setup failure (a bad setting, a failed build, SGLang missing, no free port, a service that did
not start) fails the test alone with a few lines naming the setting and the fix
(`fail_setup`); SGLang's traceback only with ``-v``.
"""

from __future__ import annotations

import functools
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import pytest

from ..ab import ConfigComparison, OutputCache, check_not_mixed
from ..errors import RunnerBuildError, SGLangRunnerError
from ..runner import LiveRunner, RunnerFactory
from ..runner.ranks import RankContext
from ..services import EngineService, ServerService, ServiceFactory
from .keys import compare_cache_key, factory_fixtures_key, factory_key, guard_key, services_key
from .settings import TEST_CONFIG_FIXTURES, TestSettings, marker_text

if TYPE_CHECKING:  # neither is imported before a test asks for a runner
    from sglang.srt.model_executor.model_runner import ModelRunner
    from transformers import PreTrainedModel

    from ..reference import HFRunner
    from ..runner import Forward


def settings_for(request: pytest.FixtureRequest, factory_overrides: dict[str, Any] | None = None) -> TestSettings:
    return TestSettings.of(request.node, request.config.stash[factory_fixtures_key], factory_overrides)


def fail_setup(request: pytest.FixtureRequest, exc: BaseException) -> NoReturn:
    """A bad config or a failed build fails this test alone, in a few lines naming the marker;
    SGLang's traceback, when there is one, only with -v."""
    markers = marker_text(request.node)
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


def live_runner_for(
    request: pytest.FixtureRequest, runner_factory: RunnerFactory, factory_overrides: dict | None = None
) -> LiveRunner:
    """The live runner of the requesting test's config (or of a factory fixture's), with its KV pool
    empty, fingerprinted for the check of what the test leaves behind (`guard`)."""
    try:
        settings = settings_for(request, factory_overrides)
        live = runner_factory.get(**settings.factory_kwargs())
    except SGLangRunnerError as exc:
        fail_setup(request, exc)
    live.forward.release()
    request.config.stash[guard_key].watch(request.node, live, settings.mutates_weights)
    return live


def hf_runner_for(
    request: pytest.FixtureRequest, runner_factory: RunnerFactory, factory_overrides: dict | None = None
) -> HFRunner:
    """The HF reference of the test's config, or of a factory fixture's (factories.hf_runner)."""
    try:
        return runner_factory.hf_runner(runner_factory.spec_for(**settings_for(request, factory_overrides).overrides))
    except SGLangRunnerError as exc:
        fail_setup(request, exc)


@pytest.fixture(scope="session")
def runner_factory(request: pytest.FixtureRequest) -> RunnerFactory:
    """This process's RunnerFactory. Only one runner lives per process: `get()` with another
    config tears the current runner down first."""
    return request.config.stash[factory_key]


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
def sglang_rank(sglang_live: LiveRunner) -> RankContext:
    """This rank's place in the TP group: ``.rank``, ``.world_size``, ``.runner``, ``.forward``.
    Rank 0 here; in an every-rank test each peer gets its own."""
    return sglang_live.rank_context()


@pytest.fixture
def sglang_model_path(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> str:
    """The local directory of this test's model (the embedded model is written on first use)."""
    try:
        return runner_factory.model_path(runner_factory.spec_for(**settings_for(request).overrides))
    except SGLangRunnerError as exc:
        fail_setup(request, exc)


@pytest.fixture(scope="session")
def tiny_checkpoint(runner_factory: RunnerFactory) -> Callable[..., Path]:
    """``tiny_checkpoint("MixtralForCausalLM", num_local_experts=8)``: the directory of a tiny random
    checkpoint of any architecture transformers knows, written once into the kit's model cache
    (`models.tiny.tiny_checkpoint`); ``--sglang-model tiny:ARCH`` is the same without overrides."""
    from ..models.tiny import tiny_checkpoint as write

    return functools.partial(write, root=runner_factory.cache_root)


@pytest.fixture
def hf_model(request: pytest.FixtureRequest, runner_factory: RunnerFactory, sglang_model_path: str) -> PreTrainedModel:
    """The same checkpoint in HF transformers (fp32, eval), for cross-checks; cached per model."""
    return runner_factory.hf_model(sglang_model_path)


@pytest.fixture
def hf_runner(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> HFRunner:
    """The test's checkpoint in HF transformers, in the runner's dtype and on its device, with the
    runner's method names and result types (`generate`, `next_token_logits`); cached per model."""
    return hf_runner_for(request, runner_factory)


@pytest.fixture
def sglang_compare(request: pytest.FixtureRequest, runner_factory: RunnerFactory) -> ConfigComparison:
    """``sglang_compare(prompts, baseline={...}, candidate={...})``: the same prompts through two
    runner configs (overrides of this test's settings), failing with a table that names both
    (`ab.ConfigComparison`); each config's outputs are kept for the session, per prompt set."""
    try:
        check_not_mixed(request.fixturenames, TEST_CONFIG_FIXTURES)
        settings = settings_for(request)
    except SGLangRunnerError as exc:
        fail_setup(request, exc)
    cache = request.config.stash.setdefault(compare_cache_key, OutputCache())
    return ConfigComparison(runner_factory, settings.factory_kwargs(), cache)


def _service(request: pytest.FixtureRequest, start):
    try:
        return start(request.config.stash[services_key], **settings_for(request).factory_kwargs())
    except SGLangRunnerError as exc:
        fail_setup(request, exc)


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
