"""A host process the kit starts for SGLang (an Engine's or a server's) and always stops, tree and all.

The host starts in a session of its own, so its process group holds everything SGLang spawns from
it (scheduler, detokenizer), including children orphaned by a crash; stopping signals that group.
Its output goes to a log file, whose end is quoted when it fails; the kit removes the log when it
stops a healthy host, and keeps it when the host died or failed to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ServiceError
from ..sglang_compat.serving import SERVING_DEVICE_ENV

LIFELINE_ENV = "PYTEST_SGLANG_LIFELINE_FD"  # a pipe the pytest process holds open while it lives
LOG_TAIL_LINES = 30
POLL_S = 0.2
TERMINATE_WAIT_S = 10.0  # for a SIGTERMed host to exit, and for its killed group to be gone


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
    ):
        self.name = name
        handle, path = tempfile.mkstemp(prefix=f"pytest-sglang-{name}-", suffix=".log")
        self.log_path = Path(path)
        lifeline, self._lifeline = os.pipe()  # the host reads EOF here when pytest is gone, however it ended
        environment = {
            **os.environ,
            **(env or {}),
            SERVING_DEVICE_ENV: device,
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
            raise
        finally:
            os.close(handle)
            os.close(lifeline)
        self.pid = self.popen.pid
        self.log_quoted = False  # an error or warning named the log: it stays

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
            if not self.alive:
                raise self.failure(f"ended before {what}")
            if deadline is not None and time.monotonic() > deadline:
                raise self.failure(f"was not {what} within {timeout_s:g} s (--sglang-timeout)")
            time.sleep(POLL_S)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        """Wait up to ``grace_s`` for the host to end by itself (when it was asked to), then SIGTERM
        it (SGLang's server drains and exits), then SIGKILL its whole process group; returns once
        nothing of it is left. The log goes too, unless the host had died by itself or an error
        named it."""
        died = not self.alive
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.popen.terminate()
            try:
                self.popen.wait(TERMINATE_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # children left behind, or a host that ignored SIGTERM
        self.popen.wait()
        deadline = time.monotonic() + TERMINATE_WAIT_S
        while self.group_alive() and time.monotonic() < deadline:  # killed children init has not reaped yet
            time.sleep(0.05)
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if not (died or self.log_quoted):
            self.log_path.unlink(missing_ok=True)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def watch_lifeline() -> None:
    """In a host: when the pytest process that started it is gone (even SIGKILLed, so that no
    cleanup of its ran), kill the host's whole process group. Nothing outlives the test run."""
    import threading

    fd = int(os.environ.pop(LIFELINE_ENV))

    def watch() -> None:
        while os.read(fd, 1):
            pass
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="pytest-lifeline", daemon=True).start()
