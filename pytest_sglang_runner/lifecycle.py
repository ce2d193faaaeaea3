"""Build one ModelRunner per process in the right order, and take everything down again.

`RunnerFactory` owns at most one live runner (SGLang allows one per process): `get(spec)`
returns it when the spec matches and otherwise tears it down and builds the new one. The build
order is: model directory, device, process environment, SGLang import and API check, ports,
ServerArgs, TP peer processes, then the adapter's bootstrap. `teardown` is the single cleanup
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
import contextlib
import multiprocessing
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import devices, ports, ranks, sglang_compat, timeouts
from .build_errors import RunnerBuildError, build_failure, drop_frames, mem_fraction_flag, model_config, port_taken_by_another_process
from .forward import Forward
from .generation import generate
from .model_dir import cached_hub_snapshot
from .options import RunnerSpec, SpecError
from .quiet import build_log, quiet_build

PEER_DUMP_WAIT_S = 1.0  # for the TP peers to write their stacks before they are killed
BUILD_ATTEMPTS = 2  # a second try only when a reserved port was taken by a process outside the kit


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


@dataclass
class LiveRunner:
    """A built runner and everything that must go away with it."""

    spec: RunnerSpec
    model_runner: Any
    forward: Forward
    model_path: str
    device: str
    gpu_ids: list[int]
    reservations: list[ports.PortReservation]
    peers: "RankPeers | None"
    record: BuildRecord
    on_broken: Callable[[], None] | None = None  # the owner's discard: after a rank failed mid-call

    @property
    def ports(self) -> list[int]:
        return [r.port for r in self.reservations]

    def rank_context(self) -> ranks.RankContext:
        return ranks.RankContext(0, self.spec.tp, self.model_runner, self.forward)

    def on_every_rank(self, function: Callable, *args: Any, **kwargs: Any) -> list:
        """``function(rank_context, *args, **kwargs)`` on every TP rank at once (rank 0 here, the
        others in their processes); the results in rank order. ``function`` must be a module-level
        function (the peers import it) and its arguments and result picklable. A rank that fails,
        exits, is killed or runs past the test's time limit raises `ranks.RankFailure` naming it,
        and the runner is torn down (the next test builds a fresh one)."""
        if self.peers is None:
            return [function(self.rank_context(), *args, **kwargs)]
        with self.every_rank(ranks.FunctionRef.of(function), args, kwargs) as call:
            call.rank0_result = function(self.rank_context(), *args, **kwargs)
        failures = ranks.peer_failures(call.outcomes)
        if failures:
            raise ranks.RankFailure("\n".join(failures)) from call.rank0_error
        if call.rank0_error is not None:
            raise call.rank0_error
        return [call.rank0_result] + [call.outcomes[rank][1] for rank in range(1, self.spec.tp)]

    @contextlib.contextmanager
    def every_rank(self, ref: ranks.FunctionRef, args: tuple, kwargs: dict) -> Iterator[ranks.EveryRankCall]:
        """Sends ``ref(context, *args, **kwargs)`` to the peers; the block is rank 0's part (its
        calls not replayed, under the test's time limit; an exception in it is kept on the call,
        not raised). Then gathers every rank's outcome, and discards the runner if a rank failed."""
        call = ranks.EveryRankCall(self.peers, self.forward.timeout_s)
        call.start(("call", ref, args, kwargs))
        with self.forward.unmirrored():
            try:
                with timeouts.deadline("every-rank call", self.forward.timeout_s, on_expire=self.peers.dump_stacks_and_stop):
                    yield call
            except BaseException as exc:  # noqa: BLE001 - gathered with the peers' outcomes; the caller raises
                call.rank0_error = exc
        call.finish()
        if call.broken and self.on_broken is not None:
            self.on_broken()


def resolve_model_path(spec: RunnerSpec, cache_root: Path) -> str:
    """A local model directory: the embedded model, the given directory, or a cached hub snapshot."""
    if spec.uses_embedded_model:
        from .models.embedded import ensure_embedded_model

        return str(ensure_embedded_model(cache_root, spec.model))
    if os.path.isdir(spec.model):
        return spec.model
    snapshot = cached_hub_snapshot(spec.model)
    if snapshot is None:  # options.py checked it; the cache changed since
        raise SpecError(f"--sglang-model {spec.model}: no longer in the local Hugging Face cache; pass a model directory")
    return snapshot


def checkpoint_dtype(spec_dtype: str, config: dict) -> str:
    """``auto`` means the checkpoint's own dtype (SGLang's ``auto`` would run fp32 checkpoints in fp16)."""
    if spec_dtype != "auto":
        return spec_dtype
    saved = str(config.get("dtype") or config.get("torch_dtype") or "auto")
    return saved if saved in ("float32", "float16", "bfloat16") else "auto"


def server_args_kwargs(spec: RunnerSpec, model_path: str, device: str, dist_port: int, server_port: int) -> dict:
    """ServerArgs for a test runner: small KV pool, no prefix cache, no CUDA graphs, fixed ports."""
    from .models import KIT_ARCHITECTURES

    config = model_config(model_path)
    kwargs: dict[str, Any] = dict(
        model_path=model_path,
        tokenizer_path=model_path,
        device=device,
        dtype=checkpoint_dtype(spec.dtype, config),
        tp_size=spec.tp,
        attention_backend=spec.attention_backend or ("triton" if device == "cuda" else "torch_native"),
        max_total_tokens=spec.max_total_tokens,
        disable_radix_cache=True,
        disable_cuda_graph=True,
        nccl_port=dist_port,
        port=server_port,
        random_seed=0,
        skip_server_warmup=True,
    )
    if device == "cpu":
        kwargs["sampling_backend"] = "pytorch"
    if spec.mem_fraction is not None:
        kwargs["mem_fraction_static"] = spec.mem_fraction
    if any(arch in KIT_ARCHITECTURES for arch in config.get("architectures") or ()):
        kwargs["is_embedding"] = True
    if spec.attention_backend:
        sglang_compat.check_attention_backend(spec.attention_backend)
    kwargs.update(sglang_compat.typed_server_args(dict(spec.server_args)))
    return kwargs


def _build_rank(spec: RunnerSpec, kwargs: dict, rank: int, gpu_id: int, dist_port: int, device: str):
    from .models import register_kit_models

    register_kit_models()
    server_args = sglang_compat.make_server_args(**kwargs)
    runner = sglang_compat.build_model_runner(server_args, tp_rank=rank, gpu_id=gpu_id, dist_port=dist_port, device=device)
    check_kv_budget(runner, spec)
    warm_up(runner)
    return runner


WARM_UP_PROMPT = [[0, 1]]
WARM_UP_NEW_TOKENS = 2


def check_kv_budget(runner, spec: RunnerSpec) -> None:
    """A pool too small for the warm-up is a bad setting, named as such (SGLang sizes its request
    slots from the pool, so a 1-token pool would otherwise blame max_running_requests)."""
    limits = sglang_compat.runner_limits(runner)
    needed = sum(map(len, WARM_UP_PROMPT)) + (WARM_UP_NEW_TOKENS if runner.is_generation else 0)
    if limits.kv_slots >= needed and limits.request_slots >= len(WARM_UP_PROMPT):
        return
    sized = f"SGLang sized this runner to {limits.kv_slots} KV token slot(s) and {limits.request_slots} request slot(s)"
    if limits.kv_slots < spec.max_total_tokens:  # memory, not the option, was the limit
        raise SpecError(f"{mem_fraction_flag(spec)}: {sized}, too few for one {needed}-token sequence; raise --sglang-mem-fraction")
    raise SpecError(
        f"--sglang-max-total-tokens {spec.max_total_tokens}: {sized}, too few for one {needed}-token sequence; "
        f"use at least {2 * needed} (the default is {RunnerSpec.max_total_tokens})"
    )


def warm_up(runner) -> None:
    """Two tokens through every path a test takes (prompt; a decode step for generative models).

    A kernel that cannot run this model (a dtype it lacks, an op missing on this device) then
    fails the build, once, with advice, instead of every test with a traceback from inside SGLang.
    Every TP rank runs it at the same point, so its collectives line up.
    """
    if runner.is_generation:
        generate(runner, WARM_UP_PROMPT, max_new_tokens=WARM_UP_NEW_TOKENS, top_logprobs=None, ignore_eos=True)
    else:
        try:
            sglang_compat.run_packed(runner, sglang_compat.pack_batch(runner, WARM_UP_PROMPT))
        finally:
            sglang_compat.free_kv(runner)


def _serve_rank(conn, spec: RunnerSpec, kwargs: dict, rank: int, gpu_id: int, dist_port: int, device: str) -> None:
    """Body of a TP peer process: build rank `rank`, then replay rank 0's forward calls until told to close."""
    timeouts.enable_stack_dumps_on_request()  # rank 0 asks when a phase runs past its limit
    warnings.simplefilter("ignore")  # a peer's warnings reach no summary, only the terminal (SGLang's, at import and exit)
    sglang_compat.prepare_process(device)
    sglang_compat.import_sglang()
    forward = None
    try:
        with build_log():  # rank 0 keeps SGLang's noise out of the test's output; so do the peers
            runner = _build_rank(spec, kwargs, rank, gpu_id, dist_port, device)
        forward = Forward(runner, model_path=kwargs["model_path"])
        conn.send(("ready", None))
        while True:
            command, *args = conn.recv()
            if command == "prepare":
                prepared = forward.prepare(args[0], hidden_states=args[1])
            elif command == "run":
                forward.run(prepared)
            elif command == "release":
                forward.release()
            elif command == "generate":
                forward.generate(args[0], **args[1])
            elif command == "call":
                conn.send(ranks.run_on_rank(ranks.RankContext(rank, spec.tp, runner, forward), *args))
            elif command == "close":
                sglang_compat.barrier()
                break
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if forward is not None:
            forward.release()
        try:
            sglang_compat.destroy_distributed_state()
        finally:
            conn.close()


class RankPeers:
    """The TP ranks 1..tp-1 of a runner, each in its own spawned process."""

    def __init__(self, spec: RunnerSpec, kwargs: dict, gpu_ids: list[int], dist_port: int, device: str):
        context = multiprocessing.get_context("spawn")  # never changes the global start method
        self.processes = []
        self.conns = []
        for rank in range(1, spec.tp):
            parent, child = context.Pipe()
            process = context.Process(
                target=_serve_rank,
                args=(child, spec, kwargs, rank, gpu_ids[rank], dist_port, device),
                name=f"sglang-tp-rank-{rank}",
                daemon=True,
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.conns.append(parent)

    def wait_ready(self) -> None:
        """Wait for every peer's build; the build's time limit (`timeouts`) bounds the wait."""
        for rank, conn in enumerate(self.conns, start=1):
            status, detail = conn.recv()  # EOFError when the peer ended without a word
            if status != "ready":
                raise RunnerBuildError(f"TP rank {rank} failed to build:\n{detail}")

    def dump_stacks_and_stop(self) -> None:
        """After a timeout: every peer writes its threads' stacks to stderr, then is killed (rank 0,
        if blocked in a collective with them, then fails instead of waiting)."""
        alive = [process for process in self.processes if process.is_alive()]
        if timeouts.PEER_DUMP_SIGNAL is not None and alive:
            ranks = ", ".join(process.name.rsplit("-", 1)[-1] for process in alive)
            sys.stderr.write(f"sglang-runner: the stacks of TP rank(s) {ranks} follow, written by their own processes:\n")
            sys.stderr.flush()
            for process in alive:
                os.kill(process.pid, timeouts.PEER_DUMP_SIGNAL)
            time.sleep(PEER_DUMP_WAIT_S)
        for process in alive:
            process.kill()

    def mirror(self, *call) -> None:
        for conn in self.conns:
            conn.send(call)

    def request_close(self) -> None:
        """Ask every peer to leave its loop; each then waits at a barrier for rank 0."""
        for conn in self.conns:
            try:
                conn.send(("close",))
            except (OSError, BrokenPipeError):
                pass

    def some_left(self, within: float) -> bool:
        """Whether a peer process has ended (waiting up to `within` seconds for one that is ending)."""
        deadline = time.monotonic() + within
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        return any(process.exitcode is not None for process in self.processes)

    def join(self, timeout: float = 30.0) -> None:
        for process in self.processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(5)
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []


def _forget_runner(live: LiveRunner | None, device: str, errors: list) -> None:
    """Undo what a build left in this process: groups, process group, SGLang's context, memory."""
    try:
        sglang_compat.destroy_distributed_state()
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
    live: LiveRunner | None = None, *, peers: RankPeers | None = None, reservations=(), device: str = "cpu", broken: bool = False
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
                    sglang_compat.barrier()  # meets the peers' barrier, so no rank destroys groups mid-collective
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
    _live: LiveRunner | None = None
    _failed: dict = field(default_factory=dict)
    _hf_models: dict = field(default_factory=dict)
    _hf_runners: dict = field(default_factory=dict)

    def spec_for(self, **overrides: Any) -> RunnerSpec:
        return self.default_spec.with_overrides(**overrides) if overrides else self.default_spec

    @property
    def live(self) -> LiveRunner | None:
        return self._live

    def get(self, spec: RunnerSpec | None = None, **overrides: Any) -> LiveRunner:
        """The live runner for `spec` (default spec plus overrides), building it if needed.

        ``timeout=SECONDS`` among the overrides (the marker's) bounds this call's teardown and
        build and the runner's forwards from now on, in place of the run's limit; it is no part of
        the spec, so it never causes a rebuild. A build that times out is not remembered as failed:
        the next test tries again (the hang may have been the machine's)."""
        limit, overrides = timeouts.split_limit(overrides)
        limit = self.timeout_s if limit is None else limit
        spec = spec or self.spec_for(**overrides)
        if self._live is not None and self._live.spec == spec:
            self._live.forward.timeout_s = limit
            return self._live
        if spec in self._failed:  # fail fast instead of rebuilding for every test
            failure = self._failed[spec]
            raise type(failure)(str(failure)) from failure.__cause__
        self.close(timeout=limit)
        try:
            with quiet_build(self.project_root) as log:
                try:
                    self._live = self._build(spec, limit)
                finally:
                    self.last_build_log = log.getvalue()
        except (SpecError, RunnerBuildError, sglang_compat.UnsupportedSGLang) as exc:
            drop_frames(exc)  # remembered below: keep no frame of the build alive
            self._failed[spec] = exc
            raise
        self._live.forward.timeout_s = limit
        return self._live

    def close(self, timeout: float | None = None, broken: bool = False) -> None:
        """Tear the live runner down (no-op when none is alive), within ``timeout`` seconds (default:
        the run's limit); past it, teardown's ``finally`` still stops the TP peers and frees the ports."""
        live, self._live = self._live, None
        self._hf_models.clear()
        self._hf_runners.clear()
        if live is not None:
            limit = self.timeout_s if timeout is None else timeout
            with timeouts.deadline("teardown", limit, on_expire=live.peers.dump_stacks_and_stop if live.peers else None):
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

    def model_path(self, spec: RunnerSpec | None = None) -> str:
        return resolve_model_path(spec or self.default_spec, self.cache_root)

    def hf_model(self, model_path: str):
        """The checkpoint in HF transformers with the architecture its config names (fp32, eval)."""
        if model_path not in self._hf_models:
            import torch

            from .reference import hf_model_class

            model_class = hf_model_class(model_path, default="AutoModel")
            self._hf_models[model_path] = model_class.from_pretrained(model_path, dtype=torch.float32).eval()
        return self._hf_models[model_path]

    def hf_runner(self, spec: RunnerSpec | None = None, model_path: str | None = None):
        """An `HFRunner` of the spec's checkpoint in the runner's dtype, on the runner's device, with
        float32 logits when the runner has them (``enable_fp32_lm_head``); cached."""
        from .reference import HFRunner

        spec = spec or self.default_spec
        model_path = model_path or self.model_path(spec)
        dtype = checkpoint_dtype(spec.dtype, model_config(model_path))
        dtype = "float32" if dtype == "auto" else dtype
        device = devices.resolve_device(spec.device)
        if device == "cuda":
            device = f"cuda:{devices.gpu_ids_for_worker(self.worker_index, spec.tp)[0]}"
        raw = dict(spec.server_args).get("enable_fp32_lm_head")
        fp32_lm_head = raw is not None and bool(sglang_compat.typed_server_args({"enable_fp32_lm_head": raw})["enable_fp32_lm_head"])
        key = (model_path, dtype, device, fp32_lm_head)
        if key not in self._hf_runners:
            self._hf_runners[key] = HFRunner(model_path, dtype=dtype, device=device, fp32_lm_head=fp32_lm_head)
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
        device = devices.resolve_device(spec.device)
        gpu_ids = devices.gpu_ids_for_worker(self.worker_index, spec.tp) if device == "cuda" else [0] * spec.tp
        model_path = resolve_model_path(spec, self.cache_root)
        sglang_compat.prepare_process(device)
        sglang_compat.import_sglang()
        sglang_compat.detect_api()  # an unknown bootstrap fails here, before any port is taken
        for attempt in range(1, BUILD_ATTEMPTS + 1):
            reservations = ports.reserve_ports(2)
            dist_port, server_port = (r.port for r in reservations)
            peers = None
            try:
                kwargs = server_args_kwargs(spec, model_path, device, dist_port, server_port)
                if spec.tp > 1:
                    peers = RankPeers(spec, kwargs, gpu_ids, dist_port, device)
                    peers_started(peers)
                runner = _build_rank(spec, kwargs, 0, gpu_ids[0], dist_port, device)
                if peers is not None:
                    peers.wait_ready()
                break
            except BaseException as exc:  # Ctrl-C mid-build too: nothing half-built may stay
                # Nothing of a failed build may stay reachable from its traceback (weights, KV pool).
                runner = None
                drop_frames(exc)
                teardown(peers=peers, reservations=reservations, device=device)
                if not isinstance(exc, Exception):
                    raise
                if attempt < BUILD_ATTEMPTS and port_taken_by_another_process(exc):
                    continue  # another process bound a reserved port after the check: new ports
                if isinstance(exc, SpecError):
                    raise
                raise build_failure(spec, model_path, device, exc) from exc
        record = BuildRecord(
            model=model_path,
            device=device if device == "cpu" else f"cuda:{','.join(map(str, gpu_ids))}",
            sglang_version=sglang_compat.installed_version(),
            dtype=kwargs["dtype"],
            attention_backend=kwargs["attention_backend"],
            tp=spec.tp,
            seconds=time.perf_counter() - started,
        )
        self.records.append(record)
        forward = Forward(runner, model_path=model_path, mirror=peers.mirror if peers else None)
        return LiveRunner(spec, runner, forward, model_path, device, gpu_ids, reservations, peers, record)
