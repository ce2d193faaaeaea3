"""One test cannot poison the next: each runner test is checked for what it left behind.

The runner a test receives is fingerprinted (`runner.guard.RunnerState`) as its fixture hands it
over, and again after the test's fixtures are torn down (a fixture that puts back what it changed
is fine). What changed is put right before the next test, and:

- changed weights, or torch's default dtype, grad mode or deterministic flag left flipped, are an
  error at the test's teardown naming what changed: a test that changes shared state without
  saying so is a bug that would otherwise surface as the next test's unexplained mismatch. The
  weights go back from the host copy kept under ``--sglang-pristine-weights``, else the runner is
  torn down and the next test builds a fresh one. A test marked
  ``@pytest.mark.sglang(mutates_weights=True)`` changes them on purpose: no error;
- KV or request slots still taken once the kit has released its own batch are freed with a
  warning (the next test is not affected once they are free).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field

import pytest

from ..errors import SlotsLeftTaken
from ..runner import LiveRunner, RunnerFactory
from ..runner.guard import PristineWeights, RunnerState, restore_torch_globals
from ..sglang_compat import batches

MUTATES_WEIGHTS = "@pytest.mark.sglang(mutates_weights=True)"


@dataclass
class Watched:
    live: LiveRunner
    before: RunnerState
    mutates_weights: bool


@dataclass(eq=False)  # a registered plugin: hashable, by identity
class RunnerGuard:
    factory: RunnerFactory
    keep_pristine: bool = False  # a host-memory copy of the live runner's weights, to restore without a rebuild
    _watched: dict[pytest.Item, Watched] = field(default_factory=dict)
    # Which runner the copy is of: a weak reference, not an id (a later runner may reuse a freed one's id),
    # and not the runner itself (that would keep a torn-down runner's weights in memory).
    _pristine: tuple[weakref.ref, PristineWeights] | None = None

    def watch(self, item: pytest.Item, live: LiveRunner, mutates_weights: bool) -> None:
        """The runner as ``item`` receives it (its KV pool empty)."""
        if self.keep_pristine and not self._copy_of(live):
            self._pristine = (weakref.ref(live), PristineWeights(live.model_runner.model))
        self._watched[item] = Watched(live, RunnerState.of(live.model_runner), mutates_weights)

    def check(self, item: pytest.Item) -> list[str]:
        """What ``item`` changed that it should not have, each put right for the next test."""
        watched = self._watched.pop(item, None)
        if watched is None or watched.live is not self.factory.live:  # rebuilt or discarded meanwhile
            return []
        live, before = watched.live, watched.before
        live.forward.release()  # the kit's own batch, if the test left one prepared
        after = RunnerState.of(live.model_runner)
        held = before.held_slots(after)
        if held:
            batches.free_kv(live.model_runner)
            warnings.warn(SlotsLeftTaken(f"{item.nodeid} left {'; '.join(held)}: freed"), stacklevel=1)
        problems = before.differences(after)
        restore_torch_globals(before.torch_globals)
        changed = before.changed_weights(after)
        if watched.mutates_weights:
            problems = [p for p in problems if not p.startswith("weights changed")]
        remedy = self._put_back(live, before, changed) if changed else None
        return problems + [remedy] if problems and remedy else problems

    def _copy_of(self, live: LiveRunner) -> bool:
        return self._pristine is not None and self._pristine[0]() is live

    def _put_back(self, live: LiveRunner, before: RunnerState, changed: list[str]) -> str:
        """The weights as they were: from the pristine copy when there is one, else by a rebuild."""
        if self._copy_of(live):
            self._pristine[1].restore(live.model_runner.model, changed)
            if not before.changed_weights(RunnerState.of(live.model_runner)):
                return "the weights were put back from the pristine copy (--sglang-pristine-weights)"
        self._pristine = None
        self.factory.close()
        return (
            "the runner was torn down: the next test of its config builds a fresh one "
            "(--sglang-pristine-weights keeps a copy in host memory to put the weights back instead)"
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None):
        result = yield
        problems = self.check(item)
        if problems:
            text = "\n".join(f"  - {p}" for p in problems)
            if any(p.startswith("weights changed") for p in problems):
                text += f"\nA test that changes the weights on purpose says so: {MUTATES_WEIGHTS}"
            raise pytest.fail.Exception(f"{item.nodeid} left the shared runner changed:\n{text}", pytrace=False)
        return result
