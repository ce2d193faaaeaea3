"""The every-rank test mode: ``@pytest.mark.sglang(tp=N, every_rank=True)`` runs the test body on
rank 0 here and at once in each TP peer against its own runner (as torch's MultiProcessTestCase
runs a test method in every rank process); it passes only if every rank passes."""

from __future__ import annotations

import inspect

import pytest

from ..errors import SpecError
from ..runner import ranks
from .keys import factory_fixtures_key, factory_key
from .settings import TestSettings


def _every_rank(item: pytest.Function) -> bool:
    try:
        return TestSettings.of(item, item.config.stash[factory_fixtures_key]).every_rank
    except SpecError:
        return False  # the bad marker fails the test at setup


def _argument_names(item: pytest.Function) -> list[str]:
    """The test function's own arguments, as pytest fills them (those without a default)."""
    parameters = inspect.signature(item.obj).parameters.values()
    return [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _rank_arguments(item: pytest.Function) -> dict[str, tuple[str, object]]:
    """What an every-rank test's peers pass for each argument: their own runner fixtures, or the
    test's parameter values; any other fixture exists on rank 0 only."""
    arguments = {}
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in _argument_names(item):
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
    live = pyfuncitem.config.stash[factory_key].live
    if live is None or live.peers is None or not _every_rank(pyfuncitem):
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
