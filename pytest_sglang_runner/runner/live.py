"""A built runner and everything that must go away with it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .. import ports, timeouts
from ..errors import RankFailure
from . import ranks
from .forward import Forward
from .peers import PeerCommand, RankPeers
from .plan import BuildPlan


@dataclass
class BuildRecord:
    """What the terminal summary reports about one build."""

    model: str
    device: str
    sglang_version: str
    dtype: str
    attention_backend: str
    tp: int
    seconds: float
    settings: str = ""  # what else sets this config apart (`other_settings`): two configs, two summary lines

    @classmethod
    def of(cls, plan: BuildPlan, sglang_version: str, seconds: float = 0.0, **more: Any):
        """The record of ``plan``'s config (a subclass's own fields in ``more``)."""
        return cls(
            model=plan.model_path,
            device=plan.device_label,
            sglang_version=sglang_version,
            dtype=plan.dtype,
            attention_backend=plan.attention_backend,
            tp=plan.spec.tp,
            seconds=seconds,
            settings=other_settings(plan.spec),
            **more,
        )


def other_settings(spec) -> str:
    """The spec's settings that the summary's model, device, dtype, backend and tp leave out,
    where they differ from the defaults: ``max_total_tokens=2048``, ``--sglang-arg`` fields."""
    defaults = type(spec)()
    shown = [
        f"{name}={getattr(spec, name)}"
        for name in ("mem_fraction", "max_total_tokens")
        if getattr(spec, name) != getattr(defaults, name)
    ]
    return ", ".join(shown + [f"{key}={value}" for key, value in spec.server_args])


@dataclass
class LiveRunner:
    """A built runner, its `Forward`, its TP peers and ports, and the plan it was built from."""

    plan: BuildPlan
    model_runner: Any
    forward: Forward
    reservations: list[ports.PortReservation]
    peers: RankPeers | None
    record: BuildRecord
    on_broken: Callable[[], None] | None = None  # the owner's discard: after a rank failed mid-call

    @property
    def spec(self):
        return self.plan.spec

    @property
    def model_path(self) -> str:
        return self.plan.model_path

    @property
    def device(self) -> str:
        return self.plan.device

    @property
    def gpu_ids(self) -> list[int]:
        return list(self.plan.gpu_ids)

    @property
    def ports(self) -> list[int]:
        return [r.port for r in self.reservations]

    def rank_context(self) -> ranks.RankContext:
        return ranks.RankContext(0, self.spec.tp, self.model_runner, self.forward)

    def on_every_rank(self, function: Callable, *args: Any, **kwargs: Any) -> list:
        """``function(rank_context, *args, **kwargs)`` on every TP rank at once (rank 0 here, the
        others in their processes); the results in rank order. ``function`` must be a module-level
        function (the peers import it) and its arguments and result picklable. A rank that fails,
        exits, is killed or runs past the test's time limit raises `RankFailure` naming it,
        and the runner is torn down (the next test builds a fresh one)."""
        if self.peers is None:
            return [function(self.rank_context(), *args, **kwargs)]
        with self.every_rank(ranks.FunctionRef.of(function), args, kwargs) as call:
            call.rank0_result = function(self.rank_context(), *args, **kwargs)
        failures = ranks.peer_failures(call.outcomes)
        if failures:
            raise RankFailure("\n".join(failures)) from call.rank0_error
        if call.rank0_error is not None:
            raise call.rank0_error
        return [call.rank0_result] + [call.outcomes[rank][1] for rank in range(1, self.spec.tp)]

    @contextlib.contextmanager
    def every_rank(self, ref: ranks.FunctionRef, args: tuple, kwargs: dict) -> Iterator[ranks.EveryRankCall]:
        """Sends ``ref(context, *args, **kwargs)`` to the peers; the block is rank 0's part (its
        calls not replayed, under the test's time limit; an exception in it is kept on the call,
        not raised). Then gathers every rank's outcome, and discards the runner if a rank failed."""
        call = ranks.EveryRankCall(self.peers, self.forward.timeout_s)
        call.start(PeerCommand("call", args=(ref, args, kwargs)))
        with self.forward.unmirrored():
            try:
                with timeouts.deadline(
                    "every-rank call", self.forward.timeout_s, on_expire=self.peers.dump_stacks_and_stop
                ):
                    yield call
            except BaseException as exc:  # noqa: BLE001 - gathered with the peers' outcomes; the caller raises
                call.rank0_error = exc
        call.finish()
        if call.broken and self.on_broken is not None:
            self.on_broken()
