"""Code on every TP rank at once: the every-rank test mode and `LiveRunner.on_every_rank`.

Rank 0 is the pytest process; ranks 1.. are the runner's peer processes (`peers.RankPeers`).
A call names a module-level function (`FunctionRef`, importable in the peers), sends it to every
peer, runs it on rank 0, and gathers each rank's outcome. A rank that fails, exits, is killed or
does not finish in time ends the call for all: while rank 0 still runs, the peers are stopped (a
rank 0 waiting in a collective with them then fails instead of hanging), and the outcome names
the rank and what happened. The runner is then torn down by its owner: its group is broken.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

PEER_GRACE_S = 2.0  # after rank 0 or a peer fails: how long the others get to finish on their own

# What an every-rank test may ask for on ranks 1..: the rank's own runner and its rank.
RANK_FIXTURES = frozenset({"runner", "sglang_forward", "sglang_live", "sglang_rank"})


@dataclass
class RankContext:
    """What code on one rank gets: its rank, the world size, its runner and its unmirrored `Forward`."""

    rank: int
    world_size: int
    runner: Any
    forward: Any

    @property
    def model_runner(self) -> Any:  # the LiveRunner spelling, for tests that take sglang_live
        return self.runner


@dataclass(frozen=True)
class FunctionRef:
    """A module-level function (or a test class's method), by module and qualified name; the
    peers import the module by name with rank 0's sys.path, or from its file."""

    module: str
    file: str | None
    qualname: str
    sys_path: tuple[str, ...]

    @classmethod
    def of(cls, function: Callable) -> FunctionRef:
        module = sys.modules.get(function.__module__)
        if "<locals>" in function.__qualname__ or module is None:
            raise TypeError(
                f"{function.__qualname__}: on_every_rank needs a module-level function (the peers import it)"
            )
        return cls(function.__module__, getattr(module, "__file__", None), function.__qualname__, tuple(sys.path))

    def resolve(self) -> Callable:
        for entry in reversed(self.sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        module = sys.modules.get(self.module)
        if module is None:
            try:
                module = importlib.import_module(self.module)
            except ImportError:
                if self.file is None:
                    raise
                spec = importlib.util.spec_from_file_location(self.module, self.file)
                module = importlib.util.module_from_spec(spec)
                sys.modules[self.module] = module
                spec.loader.exec_module(module)
        owner_names, _, name = self.qualname.rpartition(".")
        owner: Any = module
        for part in filter(None, owner_names.split(".")):
            owner = getattr(owner, part)
        return getattr(owner() if owner is not module else owner, name)  # a test class's method: on an instance


# ---------------------------------------------------------------------------------------------
# On a peer


def run_on_rank(context: RankContext, ref: FunctionRef, args: tuple, kwargs: dict) -> tuple[str, Any]:
    """Run one call on this rank: ("passed", result), ("skipped", reason) or ("failed", traceback)."""
    import pytest

    try:
        return ("passed", ref.resolve()(context, *args, **kwargs))
    except pytest.skip.Exception as exc:
        return ("skipped", str(exc.msg))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        return ("failed", traceback.format_exc())


def call_test_function(context: RankContext, test: FunctionRef, arguments: dict[str, tuple[str, Any]]) -> None:
    """An every-rank test's body on a peer: its rank fixtures from `context`, its parameters as given."""
    provided = {
        "runner": context.runner,
        "sglang_forward": context.forward,
        "sglang_live": context,
        "sglang_rank": context,
    }
    function = test.resolve()
    function(**{name: provided[value] if kind == "fixture" else value for name, (kind, value) in arguments.items()})


# ---------------------------------------------------------------------------------------------
# On rank 0


def describe_end(exitcode: int | None) -> str:
    if exitcode is None:
        return "ended its connection"
    if exitcode < 0:
        try:
            return f"was killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class EveryRankCall:
    """One call in flight on the peers while rank 0 runs its own part.

    A watcher thread reads the peers' outcomes (or their deaths) as they come. When a peer ends
    badly while rank 0 still runs, or rank 0 ends badly, the others get `PEER_GRACE_S` to finish
    and are then stopped; a peer still running at `limit` seconds has its stack dumped and is
    stopped too.
    """

    def __init__(self, peers, limit: float | None):
        self.peers = peers
        self.limit = limit or None
        self.outcomes: dict[int, tuple[str, Any]] = {}
        self.rank0_result: Any = None
        self.rank0_error: BaseException | None = None
        self._rank0_done = threading.Event()
        self._rank0_failed = False
        self._watcher: threading.Thread | None = None

    def start(self, message: Any) -> None:
        """Send ``message`` (a `peers.PeerCommand`) to every peer and start watching for their outcomes."""
        for rank, conn in enumerate(self.peers.conns, start=1):
            try:
                conn.send(message)
            except OSError:
                self.outcomes[rank] = ("ended", describe_end(self.peers.processes[rank - 1].exitcode))
        self._watcher = threading.Thread(target=self._watch, name="sglang-runner-every-rank", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        started = time.monotonic()
        pending = {
            rank: (conn, self.peers.processes[rank - 1])
            for rank, conn in enumerate(self.peers.conns, start=1)
            if rank not in self.outcomes
        }
        failed_at = started if self.outcomes else None  # a peer was gone before the call
        while pending or not self._rank0_done.is_set():
            now = time.monotonic()
            if failed_at is None and self._rank0_failed:
                failed_at = now
            if failed_at is not None and now >= failed_at + PEER_GRACE_S:
                # Whoever is still running may wait in a collective for a rank that will never come.
                self._stop_all(pending, ("stopped", "was stopped: another rank had failed"))
                return
            if self.limit and now >= started + self.limit and pending:
                self.peers.dump_stacks_and_stop()
                self._stop_all(
                    pending, ("timeout", f"did not finish within {self.limit:g} s (its stack is on stderr above)")
                )
                return
            handles = {}
            for rank, (conn, process) in pending.items():
                handles[conn] = handles[process.sentinel] = rank
            if not handles:
                self._rank0_done.wait(0.1)
                continue
            for handle in wait(list(handles), timeout=0.1):
                rank = handles[handle]
                if rank not in pending:
                    continue
                conn, process = pending.pop(rank)
                try:
                    if not conn.poll():
                        raise EOFError
                    status, detail = conn.recv()
                    self.outcomes[rank] = (
                        (status, detail) if status in ("passed", "skipped", "failed") else ("failed", detail)
                    )
                except (EOFError, OSError):
                    process.join(1.0)
                    self.outcomes[rank] = ("ended", describe_end(process.exitcode))
                if self.outcomes[rank][0] != "passed" and failed_at is None:
                    failed_at = time.monotonic()

    def _stop_all(self, pending: dict, outcome: tuple[str, str]) -> None:
        """Kill every peer (those that answered too: the group is broken) and mark the silent ones."""
        for process in self.peers.processes:
            process.kill()
        for rank in pending:
            self.outcomes[rank] = outcome

    def finish(self) -> None:
        """After rank 0's part: wait for the peers (bounded as above); `outcomes` then has every rank's."""
        import pytest

        error = self.rank0_error
        self._rank0_failed = error is not None
        self._rank0_done.set()
        if self._watcher is not None:
            self._watcher.join()
        if error is None:
            self.outcomes[0] = ("passed", self.rank0_result)
        elif isinstance(error, pytest.skip.Exception):
            self.outcomes[0] = ("skipped", str(error.msg))
        else:
            self.outcomes[0] = ("failed", "".join(traceback.format_exception_only(type(error), error)).strip())
        self.outcomes = dict(sorted(self.outcomes.items()))

    @property
    def broken(self) -> bool:
        """Whether the rank group can no longer be trusted: a rank failed (a collective may be half
        done), ended, was stopped or ran out of time. A skip on every rank leaves it whole."""
        return any(status not in ("passed", "skipped") for status, _ in self.outcomes.values())


def peer_failures(outcomes: dict[int, tuple[str, Any]]) -> list[str]:
    """'rank K ...' for each peer that failed on its own (not those stopped because of another)."""
    lines = []
    for rank, (status, detail) in outcomes.items():
        if rank == 0 or status in ("passed", "skipped", "stopped"):
            continue
        lines.append(f"rank {rank} failed:\n{detail}" if status == "failed" else f"rank {rank} {detail}")
    return lines


def skips(outcomes: dict[int, tuple[str, Any]]) -> list[str]:
    return [f"rank {rank}: {detail}" for rank, (status, detail) in outcomes.items() if status == "skipped"]
