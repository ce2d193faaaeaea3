"""Build one ModelRunner per process in the right order, and take everything down again.

`RunnerFactory` owns at most one live runner (SGLang allows one per process): `get(spec)`
returns it when the spec matches and otherwise tears it down and builds the new one. The build
order is: the plan (device, GPUs, model directory, dtype: `plan.BuildPlan`), process
environment, SGLang import and API check, ports, ServerArgs, TP peer processes (`peers`), then
the adapter's bootstrap and the warm-up (`build`). `teardown` is the single cleanup
path, used after a test session, before a rebuild, and when a build fails half-way: release
the KV pool, stop the TP peers, destroy the groups and the process group, reset SGLang's
published context, free memory, release the ports.

Each build, forward and teardown runs under the run's time limit (`timeouts`): past it, every
thread's stack is dumped, TP peers dump theirs and are stopped, and the phase fails with
`SGLangTimeout`; a runner whose build or forward timed out is torn down, so the next test builds
a fresh one, and a teardown that timed out still stops the peers and frees the ports.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import ports, timeouts
from ..errors import RunnerBuildError, SpecError, UnsupportedSGLang
from ..options import RunnerSpec
from ..sglang_compat import bootstrap, process
from .build import build_rank
from .build_errors import build_failure, drop_frames, port_taken_by_another_process
from .forward import Forward
from .live import BuildRecord, LiveRunner
from .peers import RankPeers
from .plan import BuildPlan, resolve_model_path
from .quiet import quiet_build

BUILD_ATTEMPTS = 2  # a second try only when a reserved port was taken by a process outside the kit


def _forget_runner(live: LiveRunner | None, device: str, errors: list) -> None:
    """Undo what a build left in this process: groups, process group, SGLang's context, memory."""
    try:
        bootstrap.destroy_distributed_state()
    except Exception as exc:
        errors.append(exc)
    if live is not None:
        live.model_runner = None
        live.forward.runner = None
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def teardown(
    live: LiveRunner | None = None,
    *,
    peers: RankPeers | None = None,
    reservations=(),
    device: str = "cpu",
    broken: bool = False,
) -> None:
    """The one cleanup path: safe on a half-built runner, when parts are already gone, and when
    interrupted (the peers and the ports go whatever happens before). Interrupted by a timeout,
    it also undoes the rest, under a limit of its own: the process goes on to the next build.
    ``broken``: the rank group is in an unknown state (a rank failed or hung): the peers are
    killed without a word or a barrier."""
    errors = []
    if live is not None:
        peers, reservations, device = live.peers, live.reservations, live.device
    try:
        if live is not None and not broken:
            try:
                live.forward.release()
            except Exception as exc:  # keep tearing down
                errors.append(exc)
            if peers is not None:
                peers.request_close()
                try:
                    bootstrap.barrier()  # meets the peers' barrier, so no rank destroys groups mid-collective
                except Exception as exc:
                    if not peers.some_left(within=5.0):  # Ctrl-C reaches every rank: an interrupted peer leaves
                        errors.append(exc)
        if peers is not None:
            peers.join(timeout=30.0 if live is not None and not broken else 0.0)  # a half-built or broken peer: killed
        _forget_runner(live, device, errors)
    except timeouts.SGLangTimeout as exc:
        # The hang was somewhere above: stop the peers first (nothing can wait on them then).
        if peers is not None:
            peers.join(timeout=0.0)
        with timeouts.deadline("teardown", exc.seconds):
            _forget_runner(live, device, [])
        raise
    finally:
        if peers is not None:
            peers.join(timeout=0.0)  # no-op once joined; interrupted, the peers are killed
        for reservation in reservations:
            reservation.release()
    if errors:
        raise errors[0]


@dataclass
class RunnerFactory:
    """Owns this process's runner: built on first use, rebuilt when the spec changes, closed once."""

    default_spec: RunnerSpec
    cache_root: Path
    worker_index: int = 0
    project_root: Path | None = None  # warnings from outside it during a build are SGLang's: dropped
    last_build_log: str = ""  # SGLang's log lines and progress bars of the last build (shown with -v when it fails)
    timeout_s: float = timeouts.DEFAULT_SECONDS  # the run's limit per build, forward, teardown (0: none)
    records: list[BuildRecord] = field(default_factory=list)
    progress: Callable[[str], None] = lambda text: None  # told what a slow first build waits for
    _live: LiveRunner | None = None
    _failed: dict = field(default_factory=dict)
    _hung: dict = field(default_factory=dict)  # spec -> the limit its build ran past
    _hf_models: dict = field(default_factory=dict)
    _hf_runners: dict = field(default_factory=dict)
    _plans: dict = field(default_factory=dict)

    def spec_for(self, **overrides: Any) -> RunnerSpec:
        return self.default_spec.with_overrides(**overrides) if overrides else self.default_spec

    @property
    def live(self) -> LiveRunner | None:
        return self._live

    def get(self, spec: RunnerSpec | None = None, **overrides: Any) -> LiveRunner:
        """The live runner for `spec` (default spec plus overrides), building it if needed.

        ``timeout=SECONDS`` among the overrides (the marker's) bounds this call's teardown and
        build and the runner's forwards from now on, in place of the run's limit; it is no part of
        the spec, so it never causes a rebuild. A build that timed out is remembered with its
        limit, as a failed one is: a later test of the config fails at once unless it allows a
        longer limit (a hang costs the limit once, and a longer limit is the way to retry)."""
        limit, overrides = timeouts.split_limit(overrides)
        limit = self.timeout_s if limit is None else limit
        spec = spec or self.spec_for(**overrides)
        if self._live is not None and self._live.spec == spec:
            self._live.forward.timeout_s = limit
            return self._live
        if spec in self._failed:  # fail fast instead of rebuilding for every test
            failure = self._failed[spec]
            raise type(failure)(str(failure)) from failure.__cause__
        if limit and self._hung.get(spec, 0) >= limit:
            raise RunnerBuildError(
                f"this config's build ran past the {self._hung[spec]:g} s limit earlier in this session; it is not tried "
                f"again within the same limit: give it longer with {timeouts.HOW_TO_RAISE}"
            )
        self.close(timeout=limit)
        # Said before the build's log takes the output (a line written inside it would undo that).
        first = not process.sglang_imported()
        self._announce_slow_steps(spec, first)
        try:
            with quiet_build(self.project_root) as log:
                try:
                    self._live = self._build(spec, limit)
                finally:
                    self.last_build_log = log.getvalue()
        except (SpecError, RunnerBuildError, UnsupportedSGLang) as exc:
            drop_frames(exc)  # remembered below: keep no frame of the build alive
            self._failed[spec] = exc
            raise
        except timeouts.SGLangTimeout:
            self._hung[spec] = limit
            raise
        if first:
            self.progress(f"built in {self._live.record.seconds:.1f} s (later builds in this process skip the import)")
        self._live.forward.timeout_s = limit
        return self._live

    def _announce_slow_steps(self, spec: RunnerSpec, first: bool) -> None:
        """What a build about to start waits for: the embedded model's writing, SGLang's import."""
        from ..models.embedded import embedded_model_written

        if (
            spec.uses_embedded_model
            and spec not in self._plans
            and not embedded_model_written(self.cache_root, spec.model)
        ):
            self.progress(f"writing the embedded model {spec.model} (once per machine)")
        if first:
            peers = f"; its {spec.tp - 1} TP peer rank(s) import it too" if spec.tp > 1 else ""
            self.progress(f"importing SGLang for this process's first build ({spec.describe()}){peers}")

    def close(self, timeout: float | None = None, broken: bool = False) -> None:
        """Tear the live runner down (no-op when none is alive), within ``timeout`` seconds (default:
        the run's limit); past it, teardown's ``finally`` still stops the TP peers and frees the ports."""
        live, self._live = self._live, None
        self._hf_models.clear()
        self._hf_runners.clear()
        if live is not None:
            limit = self.timeout_s if timeout is None else timeout
            with timeouts.deadline(
                "teardown", limit, on_expire=live.peers.dump_stacks_and_stop if live.peers else None
            ):
                teardown(live, broken=broken)

    def discard(self) -> None:
        """A timeout, or a rank that failed mid-call, left the rank group in an unknown state: the
        runner goes now (its peers killed, no barrier) and the next test builds a fresh one. Errors
        on the way are printed; the test fails with its own."""
        if self._live is not None:
            try:
                self.close(timeout=self._live.forward.timeout_s, broken=True)
            except Exception as exc:
                sys.stderr.write(f"sglang-runner: while tearing down the broken runner: {exc!r}\n")

    def plan(self, spec: RunnerSpec | None = None) -> BuildPlan:
        """What ``spec`` (default: the run's) builds on this worker: model directory, device, GPUs,
        dtype; resolved once per spec and process."""
        spec = spec or self.default_spec
        if spec not in self._plans:
            self._plans[spec] = BuildPlan.resolve(spec, self.cache_root, self.worker_index)
        return self._plans[spec]

    def model_path(self, spec: RunnerSpec | None = None) -> str:
        """The spec's local model directory (the embedded model written on first use); no device needed."""
        spec = spec or self.default_spec
        if spec in self._plans:
            return self._plans[spec].model_path
        return resolve_model_path(spec, self.cache_root, self.progress)

    def hf_model(self, model_path: str):
        """The checkpoint in HF transformers with the architecture its config names (fp32, eval)."""
        if model_path not in self._hf_models:
            import torch

            from ..reference import hf_model_class

            model_class = hf_model_class(model_path, default="AutoModel")
            self._hf_models[model_path] = model_class.from_pretrained(model_path, dtype=torch.float32).eval()
        return self._hf_models[model_path]

    def hf_runner(self, spec: RunnerSpec | None = None):
        """An `HFRunner` of the spec's checkpoint in the runner's dtype, on the runner's device, with
        float32 logits when the runner has them (``enable_fp32_lm_head``); cached."""
        from ..reference import HFRunner

        plan = self.plan(spec)
        fp32_lm_head = bool(plan.server_arg("enable_fp32_lm_head"))
        key = (plan.model_path, plan.dtype, plan.rank0_device, fp32_lm_head)
        if key not in self._hf_runners:
            self._hf_runners[key] = HFRunner(
                plan.model_path, dtype=plan.dtype, device=plan.rank0_device, fp32_lm_head=fp32_lm_head
            )
        return self._hf_runners[key]

    def _build(self, spec: RunnerSpec, limit: float) -> LiveRunner:
        """`_build_runner` within ``limit`` seconds; past it, the TP peers started so far dump their
        stacks and are stopped, and `_build_runner`'s cleanup frees the rest."""
        started_peers: list[RankPeers] = []

        def stop_peers() -> None:
            for peers in started_peers:
                peers.dump_stacks_and_stop()

        live = None
        try:
            with timeouts.deadline("build", limit, on_expire=stop_peers):
                live = self._build_runner(spec, started_peers.append)
        except timeouts.SGLangTimeout:
            if live is not None:  # built, just past the limit: it fails all the same, and goes
                teardown(live)
            raise
        live.forward.on_expire = live.peers.dump_stacks_and_stop if live.peers else None
        live.forward.on_broken = live.on_broken = self.discard
        return live

    def _build_runner(self, spec: RunnerSpec, peers_started: Callable[[RankPeers], None]) -> LiveRunner:
        started = time.perf_counter()
        plan = self.plan(spec)
        process.prepare_process(plan.device)
        process.import_sglang()
        process.detect_api()  # an unknown bootstrap fails here, before any port is taken
        version = process.installed_version()
        for attempt in range(1, BUILD_ATTEMPTS + 1):
            reservations = ports.reserve_ports(2)
            dist_port, server_port = (r.port for r in reservations)
            peers = None
            try:
                kwargs = plan.server_args(dist_port, server_port)
                if spec.tp > 1:
                    peers = RankPeers(plan, kwargs)
                    peers_started(peers)
                runner = build_rank(plan, kwargs, 0)
                if peers is not None:
                    peers.wait_ready()
                break
            except BaseException as exc:  # Ctrl-C mid-build too: nothing half-built may stay
                # Nothing of a failed build may stay reachable from its traceback (weights, KV pool).
                runner = None
                drop_frames(exc)
                teardown(peers=peers, reservations=reservations, device=plan.device)
                if not isinstance(exc, Exception):
                    raise
                if attempt < BUILD_ATTEMPTS and port_taken_by_another_process(exc):
                    continue  # another process bound a reserved port after the check: new ports
                if isinstance(exc, SpecError):
                    raise
                raise build_failure(plan, exc) from exc
        record = BuildRecord.of(plan, version, time.perf_counter() - started)
        self.records.append(record)
        forward = Forward(runner, model_path=plan.model_path, mirror=peers.mirror if peers else None)
        return LiveRunner(plan, runner, forward, reservations, peers, record)
