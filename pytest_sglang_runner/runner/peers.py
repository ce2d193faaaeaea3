"""The TP peers: ranks 1..tp-1 of a runner, each in a spawned process, and both ends of the
protocol that keeps them in step with rank 0.

Rank 0 (the pytest process) sends one `PeerCommand` per message. A peer builds its rank, says
``ready``, and then runs each command it receives: ``forward`` replays a `Forward` method that
rank 0 just called (so every rank enters SGLang's collectives together; `Forward` mirrors each
of its public calls by name, so a new method needs no change here), ``call`` runs a function on
this rank and answers with its outcome (`ranks`), ``close`` meets rank 0 at a barrier and ends.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

from .. import timeouts
from ..errors import RankFailure, RunnerBuildError
from ..sglang_compat import bootstrap, process
from . import ranks
from .build import build_rank
from .forward import Forward
from .plan import BuildPlan
from .quiet import build_log

PEER_DUMP_WAIT_S = 1.0  # for the TP peers to write their stacks before they are killed


@dataclass(frozen=True)
class PeerCommand:
    """One message from rank 0 to a peer: ``forward`` (a `Forward` method by name, with its
    arguments), ``call`` (``args`` = a `ranks.FunctionRef` and its arguments) or ``close``."""

    kind: str
    method: str = ""
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def serve_rank(conn, plan: BuildPlan, kwargs: dict, rank: int) -> None:
    """Body of a TP peer process: build rank ``rank``, then run rank 0's commands until told to close."""
    timeouts.enable_stack_dumps_on_request()  # rank 0 asks when a phase runs past its limit
    warnings.simplefilter(
        "ignore"
    )  # a peer's warnings reach no summary, only the terminal (SGLang's, at import and exit)
    process.prepare_process(plan.device)
    forward = None
    try:
        with build_log():  # rank 0 keeps SGLang's noise out of the test's output; so do the peers
            process.import_sglang()  # its "Ignore import error ..." lines too
            runner = build_rank(plan, kwargs, rank)
        forward = Forward(runner, model_path=plan.model_path)
        conn.send(("ready", None))
        while True:
            command: PeerCommand = conn.recv()
            if command.kind == "forward":
                getattr(forward, command.method)(*command.args, **command.kwargs)
            elif command.kind == "call":
                conn.send(ranks.run_on_rank(ranks.RankContext(rank, plan.spec.tp, runner, forward), *command.args))
            elif command.kind == "close":
                bootstrap.barrier()
                break
            else:
                raise ValueError(f"unknown peer command {command!r}")
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if forward is not None:
            forward.release()
        try:
            bootstrap.destroy_distributed_state()
        finally:
            conn.close()


class RankPeers:
    """Rank 0's end: the peer processes, their pipes, and how they are stopped."""

    def __init__(self, plan: BuildPlan, kwargs: dict):
        context = multiprocessing.get_context("spawn")  # never changes the global start method
        self.processes = []
        self.conns = []
        for rank in range(1, plan.spec.tp):
            parent, child = context.Pipe()
            peer = context.Process(
                target=serve_rank, args=(child, plan, kwargs, rank), name=f"sglang-tp-rank-{rank}", daemon=True
            )
            peer.start()
            child.close()
            self.processes.append(peer)
            self.conns.append(parent)

    def wait_ready(self) -> None:
        """Wait for every peer's build; the build's time limit (`timeouts`) bounds the wait."""
        for rank, conn in enumerate(self.conns, start=1):
            status, detail = conn.recv()  # EOFError when the peer ended without a word
            if status != "ready":
                raise RunnerBuildError(f"TP rank {rank} failed to build:\n{detail}")

    def mirror(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Replay rank 0's ``Forward.<method>(*args, **kwargs)`` on every peer."""
        command = PeerCommand("forward", method, args, kwargs)
        for rank, (conn, peer) in enumerate(zip(self.conns, self.processes), start=1):
            try:
                conn.send(command)
            except OSError as exc:  # the peer is gone: say which, not a BrokenPipeError
                peer.join(1.0)
                raise RankFailure(
                    f"TP rank {rank} {ranks.describe_end(peer.exitcode)} before rank 0's {method}(): the runner "
                    "is torn down, and the next test builds a fresh one"
                ) from exc

    def dump_stacks_and_stop(self) -> None:
        """After a timeout: every peer writes its threads' stacks to stderr, then is killed (rank 0,
        if blocked in a collective with them, then fails instead of waiting)."""
        alive = [peer for peer in self.processes if peer.is_alive()]
        if timeouts.PEER_DUMP_SIGNAL is not None and alive:
            names = ", ".join(peer.name.rsplit("-", 1)[-1] for peer in alive)
            sys.stderr.write(
                f"sglang-runner: the stacks of TP rank(s) {names} follow, written by their own processes:\n"
            )
            sys.stderr.flush()
            for peer in alive:
                os.kill(peer.pid, timeouts.PEER_DUMP_SIGNAL)
            time.sleep(PEER_DUMP_WAIT_S)
        for peer in alive:
            peer.kill()

    def request_close(self) -> None:
        """Ask every peer to leave its loop; each then waits at a barrier for rank 0."""
        for conn in self.conns:
            try:
                conn.send(PeerCommand("close"))
            except (OSError, BrokenPipeError):
                pass

    def some_left(self, within: float) -> bool:
        """Whether a peer process has ended (waiting up to ``within`` seconds for one that is ending)."""
        deadline = time.monotonic() + within
        for peer in self.processes:
            peer.join(max(0.0, deadline - time.monotonic()))
        return any(peer.exitcode is not None for peer in self.processes)

    def join(self, timeout: float = 30.0) -> None:
        for peer in self.processes:
            peer.join(timeout)
            if peer.is_alive():
                peer.kill()
                peer.join(5)
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []
