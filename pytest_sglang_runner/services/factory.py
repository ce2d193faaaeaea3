"""`ServiceFactory`: at most one hosted Engine and one hosted server per pytest process, each
built with a test config's settings, reused while the config stays the same, started again when
it died, and stopped (process tree and ports) at the end of the session. It keeps a record of
each start and stop for the terminal summary, and passes what a start waits for to ``progress``."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import ports, timeouts
from ..errors import ServiceError, ServiceRestarted
from ..options import RunnerSpec
from ..runner.factory import RunnerFactory
from ..runner.live import BuildRecord
from ..sglang_compat.process import installed_version
from .engine import EngineService
from .server import ServerService


@dataclass(kw_only=True)
class ServiceRecord(BuildRecord):
    """What the terminal summary reports about one start of an Engine or server: the config, as a
    runner's `BuildRecord` names it, with ``seconds`` the start's; whether it failed, and the stop."""

    service: str  # "Engine" or "server"
    failed: bool = False
    stop_seconds: float | None = None
    freed_mib: float | None = None  # stopped after its last test: the memory that gave back (GPU's on CUDA)


@dataclass
class _Slot:
    """One kind of service: the live one, its config, ports and record, and the configs that failed to start."""

    live: Any = None
    spec: RunnerSpec | None = None
    record: ServiceRecord | None = None
    reservations: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)

    def stop(self) -> None:
        live, record, self.live, self.spec, self.record = self.live, self.record, None, None, None
        try:
            if live is not None:
                seconds = live.stop()
                if record is not None:
                    record.stop_seconds = seconds
        finally:
            for reservation in self.reservations:
                reservation.release()
            self.reservations = []


@dataclass
class ServiceFactory:
    runners: RunnerFactory  # for the config, the model directory, the worker's GPUs and the time limit
    progress: Callable[[str], None] | None = None  # what a start or stop waits for, as it goes (the terminal's)
    records: list[ServiceRecord] = field(default_factory=list)
    _engine: _Slot = field(default_factory=_Slot)
    _server: _Slot = field(default_factory=_Slot)

    def engine(self, **overrides: Any) -> EngineService:
        """The Engine for the default config plus ``overrides`` (a test's marker or factory fixture)."""
        return self._get(self._engine, "sglang_engine", self._start_engine, overrides)

    def server(self, **overrides: Any) -> ServerService:
        """The server for the default config plus ``overrides``; ready (``/health`` 200) when returned."""
        return self._get(self._server, "sglang_server", self._start_server, overrides)

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def _get(self, slot: _Slot, name: str, start: Callable, overrides: dict):
        limit, overrides = timeouts.split_limit(overrides)
        limit = self.runners.timeout_s if limit is None else limit
        spec = self.runners.spec_for(**overrides)
        if spec in slot.failed:  # fail fast instead of starting it again for every test
            raise ServiceError(str(slot.failed[spec]))
        if slot.live is not None and slot.spec == spec:
            slot.live.timeout_s = limit
            if slot.live.alive:
                return slot.live
            process = slot.live.process
            died = f"pid {process.pid} {process.exit_text()}, log {process.log_path}" if process else "it was stopped"
            warnings.warn(
                ServiceRestarted(f"{name}: the last one ended since the previous test ({died}); starting another"),
                stacklevel=1,
            )
        slot.stop()
        record = None
        began = time.monotonic()
        try:
            record = self._record(name, spec)
            self._say(f"starting SGLang {describe(record)}")
            slot.live, slot.spec, slot.record = start(slot, spec, limit), spec, record
        except BaseException as exc:
            if isinstance(exc, ServiceError):  # a start that failed, not one that was interrupted
                slot.failed[spec] = exc
                if record is not None:
                    record.failed = True
            slot.stop()
            raise
        finally:
            if record is not None:
                record.seconds = time.monotonic() - began
        return slot.live

    def _record(self, name: str, spec: RunnerSpec) -> ServiceRecord:
        record = ServiceRecord.of(
            self.runners.plan(spec), installed_version(), service="Engine" if name == "sglang_engine" else "server"
        )
        self.records.append(record)
        return record

    def _kwargs(self, slot: _Slot, spec: RunnerSpec, count: int) -> tuple[dict, str]:
        """The runner's ServerArgs for ``spec`` on fresh reserved ports (the last ``count - 2`` kept for the caller)."""
        plan = self.runners.plan(spec)
        slot.reservations = ports.reserve_ports(count)
        dist_port, internal_port = (r.port for r in slot.reservations[:2])
        kwargs = plan.server_args(dist_port, internal_port)
        if plan.device == "cuda":
            kwargs["base_gpu_id"] = plan.gpu_ids[0]
        return kwargs, plan.device

    def _start_engine(self, slot: _Slot, spec: RunnerSpec, limit: float) -> EngineService:
        kwargs, device = self._kwargs(slot, spec, 2)
        return EngineService(kwargs, device=device, timeout_s=limit, progress=self.progress).start()

    def _start_server(self, slot: _Slot, spec: RunnerSpec, limit: float) -> ServerService:
        kwargs, device = self._kwargs(slot, spec, 3)
        return ServerService(
            kwargs, device=device, timeout_s=limit, reservation=slot.reservations[2], progress=self.progress
        ).start()

    def stop_early(self, name: str, spec: RunnerSpec) -> None:
        """Stop ``name``'s service (``sglang_engine`` or ``sglang_server``) if it runs ``spec``: no
        later test needs it. Its record keeps the memory that gave back: the GPU's free memory
        before and after on CUDA (on one GPU it is the runner's to use), else the process tree's."""
        slot = self._engine if name == "sglang_engine" else self._server
        if slot.live is None or slot.spec != spec:
            return
        record, process = slot.record, getattr(slot.live, "process", None)
        plan = self.runners.plan(spec)
        gpu = plan.gpu_ids[0] if plan.device == "cuda" else None
        before = _free_gpu_mib(gpu) if gpu is not None else (process.resident_mib() if process else None)
        if process is not None:
            self._say(f"stopping SGLang {process.name} (pid {process.pid}): no later test needs it")
        slot.stop()
        if record is not None and before is not None:
            record.freed_mib = _free_gpu_mib(gpu) - before if gpu is not None else before

    @property
    def held_ports(self) -> set[int]:
        """The ports the live Engine and server hold reserved (released when they stop)."""
        return {r.port for slot in (self._engine, self._server) for r in slot.reservations}

    def close(self) -> None:
        """Stop both (their whole process trees) and release their ports. Both are asked to stop
        first, so that their shutdowns overlap."""
        live = [slot.live for slot in (self._engine, self._server) if slot.live is not None]
        names = [f"SGLang {s.process.name} (pid {s.process.pid})" for s in live if s.process is not None]
        if names:
            self._say("stopping " + " and ".join(names))
        for service in live:
            service.ask_to_stop()
        try:
            self._engine.stop()
        finally:
            self._server.stop()


def describe(record) -> str:
    """A config as the summary names it: a `ServiceRecord`'s or a runner `BuildRecord`'s (or their dicts)."""
    get = record.get if isinstance(record, dict) else lambda key, default=None: getattr(record, key, default)
    service = get("service")
    what = f"{service} for" if service else "built"
    settings = get("settings") or ""
    return (
        f"{what} {get('model')} on {get('device')}, {get('dtype')}, {get('attention_backend')} attention, "
        f"tp {get('tp')}{', ' + settings if settings else ''}"
    )


def _free_gpu_mib(gpu: int) -> float:
    import torch

    return torch.cuda.mem_get_info(gpu)[0] / 2**20
