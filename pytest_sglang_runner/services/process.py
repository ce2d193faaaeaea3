"""A host process the kit starts for SGLang (an Engine's or a server's) and always stops, tree and all.

The host starts in a session of its own, so its process group holds everything SGLang spawns from
it (scheduler, detokenizer), including children orphaned by a crash; stopping signals that group.
Its output goes to a log file, whose end is quoted when it fails; the kit removes the log when it
stops a healthy host, and keeps it when the host died or failed to start. While it starts, the
phases the host writes to that log (`report_phase`) are passed on to ``progress``, so that the
terminal says what a start of half a minute or more is waiting for.
Its temporary directory is a folder of its own, removed at its stop: SGLang names its IPC sockets
with ``tempfile.NamedTemporaryFile(delete=False)`` and never removes them (five or more per start).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ServiceError
from ..sglang_compat.serving import SERVING_DEVICE_ENV, SHARED_MEMORY_RECORD_ENV, remove_recorded_shared_memory

LIFELINE_ENV = "PYTEST_SGLANG_LIFELINE_FD"  # a pipe the pytest process holds open while it lives
SCRATCH_ENV = "PYTEST_SGLANG_SCRATCH"  # the host's own temporary directory, which goes with it
SHARED_MEMORY_RECORD = "shared-memory.record"  # in that directory
LOG_TAIL_LINES = 30
POLL_S = 0.2
STOP_WAIT_S = 10.0  # bound for a host asked to stop to exit, and for its killed group to be gone
PHASE_PREFIX = "pytest-sglang-runner phase: "  # a host's line in its log: what its start does now


class HostedProcess:
    """``python -m module args...`` in its own session, output to a log file."""

    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str] = (),
        *,
        device: str,
        pass_fds: Sequence[int] = (),
        env: dict | None = None,
        progress: Callable[[str], None] | None = None,
    ):
        self.name = name
        self.progress = progress
        self.start_seconds: float | None = None  # set by `ready`
        self.stop_seconds: float | None = None  # set by `stop`
        self._phase = ""
        self._log_read = 0
        self._terminated = False
        handle, path = tempfile.mkstemp(prefix=f"pytest-sglang-{name}-", suffix=".log")
        self.log_path = Path(path)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"psr-{name}-"))  # its TMPDIR; short, for socket paths
        self.shared_memory_record = self.scratch / SHARED_MEMORY_RECORD  # what the group's processes make in /dev/shm
        lifeline, self._lifeline = os.pipe()  # the host reads EOF here when pytest is gone, however it ended
        environment = {
            **os.environ,
            **_caches_outside(tempfile.gettempdir()),
            **(env or {}),
            "TMPDIR": str(self.scratch),
            SCRATCH_ENV: str(self.scratch),
            SERVING_DEVICE_ENV: device,
            SHARED_MEMORY_RECORD_ENV: str(self.shared_memory_record),
            LIFELINE_ENV: str(lifeline),
            "PYTHONUNBUFFERED": "1",
        }
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                pass_fds=(*pass_fds, lifeline),
                env=environment,
                start_new_session=True,
            )
        except BaseException:
            os.close(self._lifeline)
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        finally:
            os.close(handle)
            os.close(lifeline)
        self.started = time.monotonic()
        self.pid = self.popen.pid
        self.log_quoted = False  # an error or warning named the log: it stays
        self.announce("importing SGLang")

    def announce(self, phase: str) -> None:
        """Tell ``progress`` what the start waits for now, once per phase."""
        if phase != self._phase and self.start_seconds is None:
            self._phase = phase
            if self.progress is not None:
                self.progress(
                    f"SGLang {self.name} (pid {self.pid}) at {time.monotonic() - self.started:.0f} s: {phase}"
                )

    def ready(self) -> None:
        """The start is over: record how long it took, and say so."""
        self.start_seconds = time.monotonic() - self.started
        if self.progress is not None:
            self.progress(f"SGLang {self.name} (pid {self.pid}) ready in {self.start_seconds:.1f} s")

    def _read_phase(self) -> None:
        """The last phase the host wrote to its log since the last look (whole lines only)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_read)
                text = log.read()
        except OSError:
            return
        end = text.rfind(b"\n") + 1
        self._log_read += end
        phases = [line for line in text[:end].decode(errors="replace").splitlines() if line.startswith(PHASE_PREFIX)]
        if phases:
            self.announce(phases[-1][len(PHASE_PREFIX) :])

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_briefly(self, seconds: float = 5.0) -> None:
        """Give a process that lost its connections time to finish dying (a SIGKILLed host closes
        its sockets before it exits)."""
        try:
            self.popen.wait(seconds)
        except subprocess.TimeoutExpired:
            pass

    def exit_text(self) -> str:
        code = self.popen.poll()
        if code is None:
            return "is still running"
        if code < 0:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        return f"exited with code {code}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def failure(self, what: str) -> ServiceError:
        """An error saying what went wrong, with the process's state and the end of its log (kept)."""
        self.log_quoted = True
        tail = self.log_tail()
        quoted = (
            f"\nlast lines of its log ({self.log_path}):\n{tail}" if tail else f"\n(its log, {self.log_path}, is empty)"
        )
        return ServiceError(f"SGLang {self.name} (pid {self.pid}) {what}; it {self.exit_text()}{quoted}")

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``ready()`` until it is true; a death or the limit (0: none) raises `ServiceError` at once."""
        deadline = time.monotonic() + timeout_s if timeout_s else None
        while not ready():
            if self.start_seconds is None:
                self._read_phase()
            if not self.alive:
                raise self.failure(f"ended before {what}")
            if deadline is not None and time.monotonic() > deadline:
                raise self.failure(f"was not {what} within {timeout_s:g} s (--sglang-timeout)")
            time.sleep(POLL_S)

    def _group_members(self) -> list[str] | None:
        """The pids (as /proc names) of the host's process group that still run (a zombie has
        closed its files and sockets and freed its memory; reaping it is init's job); None without procfs."""
        try:
            entries = os.listdir("/proc")
        except OSError:
            return None
        members = []
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()  # after the command, which may hold spaces
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[2]) == self.pid and fields[0] not in (b"Z", b"X"):
                members.append(entry)
        return members

    def group_running(self) -> bool:
        """Something of the host's process group still runs."""
        members = self._group_members()
        if members is not None:
            return bool(members)
        try:  # no procfs: any member, zombies included
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def resident_mib(self) -> float | None:
        """The host's process group's resident memory, summed (shared pages counted in each
        member); None without procfs."""
        members = self._group_members()
        if members is None:
            return None
        pages = 0
        for entry in members:
            try:
                with open(f"/proc/{entry}/statm") as statm:
                    pages += int(statm.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def terminate(self) -> None:
        """SIGTERM to the host alone, once (SGLang's server drains and exits, taking its children;
        a second SIGTERM would cut the drain short)."""
        if self.alive and not self._terminated:
            self._terminated = True
            self.popen.terminate()

    def stop(self, grace_s: float = STOP_WAIT_S, then_terminate: bool = True) -> float:
        """Wait up to ``grace_s`` for a host that was asked to stop to end by itself, then (with
        ``then_terminate``) SIGTERM it and wait as long again, then SIGKILL its whole process
        group; returns the seconds it took once nothing of it runs. Every wait ends as soon as
        the process has: a host that is dead already goes straight to the SIGKILL of its group.
        A second call returns the first one's seconds.
        The log goes too, unless the host had died by itself or an error named it."""
        if self.stop_seconds is not None:  # stopped already: how long that took
            return self.stop_seconds
        began = time.monotonic()
        died = not self.alive
        if not died:
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                if then_terminate:
                    self.popen.terminate()
                    try:
                        self.popen.wait(STOP_WAIT_S)
                    except subprocess.TimeoutExpired:
                        pass
        self._signal_group(signal.SIGKILL)  # children left behind, or a host that ignored SIGTERM
        self.popen.wait()
        deadline = time.monotonic() + STOP_WAIT_S
        while self.group_running() and time.monotonic() < deadline:  # SIGKILLed, but not yet exited
            time.sleep(0.02)
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if not self.group_running():  # what a killed member could not unlink (a live one would still use it)
            remove_leftovers(str(self.scratch))
        if not (died or self.log_quoted):
            self.log_path.unlink(missing_ok=True)
        self.stop_seconds = time.monotonic() - began
        return self.stop_seconds

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def remove_leftovers(scratch: str) -> None:
    """What a host's group leaves that only names hold: the shared memory its record names, then its
    temporary directory (SGLang's IPC sockets, the record itself)."""
    remove_recorded_shared_memory(os.path.join(scratch, SHARED_MEMORY_RECORD))
    shutil.rmtree(scratch, ignore_errors=True)


def _caches_outside(temp_root: str) -> dict[str, str]:
    """TorchInductor keeps its compile cache under the temporary directory; pinned where it is for
    the pytest process, so that each host's private TMPDIR does not start it cold."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return {}
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid: the host computes its own
        return {}
    return {"TORCHINDUCTOR_CACHE_DIR": os.path.join(temp_root, f"torchinductor_{user}")}


def report_phase(phase: str) -> None:
    """In a host: say (in its log, for the pytest side to pass on) what its start does now."""
    print(f"{PHASE_PREFIX}{phase}", flush=True)


def watch_lifeline() -> None:
    """In a host: when the pytest process that started it is gone (even SIGKILLed, so that no
    cleanup of its ran), do the stop's cleanup itself (its temporary directory, the shared memory
    its group recorded) and kill the host's whole process group. Nothing outlives the test run."""
    import threading

    fd = int(os.environ.pop(LIFELINE_ENV))
    scratch = os.environ.get(SCRATCH_ENV)

    def watch() -> None:
        while os.read(fd, 1):
            pass
        try:  # names only: the group's processes, killed next, keep what they have open
            if scratch:
                remove_leftovers(scratch)
        finally:
            os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="pytest-lifeline", daemon=True).start()
