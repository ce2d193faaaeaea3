"""Hang protection: a time limit on each runner build, forward and teardown, with a stack dump past it.

One setting, ``--sglang-timeout SECONDS`` / ini ``sglang_timeout`` (default 300; 0: no limit), per
test through ``@pytest.mark.sglang(timeout=...)``. It bounds each phase, not the test, and is no
part of the runner's config: changing it never rebuilds the runner.

`deadline` arms the one watchdog thread of the process. Past the limit, the watchdog writes every
thread's stack to stderr (faulthandler, so a main thread stuck in native code shows too), runs the
phase's own hook (TP peers dump theirs and are stopped, which also frees a rank 0 blocked in a
collective with them), then interrupts the main thread with SIGALRM, whose handler raises
`SGLangTimeout` there. The itimer is never touched, so pytest-timeout's signal method keeps its
own: its SIGALRM handler is kept while a phase runs, gets every SIGALRM that is not the kit's, and
is put back afterwards. Off the main thread, or without SIGALRM (Windows), the stacks are dumped
at the limit and the phase fails when it returns.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping

from .errors import HOW_TO_RAISE_TIMEOUT as HOW_TO_RAISE
from .errors import SGLangTimeout
from .options import OPTIONS_BY_FIELD

DEFAULT_SECONDS = 300.0
KEY = "timeout"  # the marker's (and RunnerFactory.get's) argument
PEER_DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)  # TP peers dump their stacks on it (faulthandler.register)
CAN_INTERRUPT = hasattr(signal, "SIGALRM") and hasattr(signal, "pthread_kill")


def parse_limit(value: Any) -> float:
    """Seconds (0: no limit), or a `SpecError` naming --sglang-timeout."""
    return OPTIONS_BY_FIELD[KEY].parse(value)


def split_limit(overrides: Mapping[str, Any]) -> tuple[float | None, dict[str, Any]]:
    """A test's overrides as (its limit, or None when not given; the settings that choose its runner)."""
    rest = dict(overrides)
    return (parse_limit(rest.pop(KEY)) if KEY in rest else None), rest


def limit_from_config(config) -> float:
    """--sglang-timeout over ini sglang_timeout over the default."""
    given = config.getoption("sglang_timeout")
    raw = given if given is not None else (config.getini("sglang_timeout") or None)
    return DEFAULT_SECONDS if raw is None else parse_limit(raw)


def dump_stacks(headline: str) -> None:
    """``headline``, then the stack of every thread of this process, on stderr (the test's captured
    stderr while pytest captures)."""
    stream = sys.stderr
    try:
        stream.write(f"\n{headline}\n")
        stream.flush()
        fileno = stream.fileno()
    except (AttributeError, ValueError, OSError):  # no stream, or one without a file descriptor (capture=sys)
        fileno = 2
        os.write(fileno, f"\n{headline}\n".encode())
    faulthandler.dump_traceback(file=fileno, all_threads=True)


def enable_stack_dumps_on_request() -> None:
    """In a TP peer process: write every thread's stack to stderr on PEER_DUMP_SIGNAL (from C, so a
    peer stuck in a collective or a kernel answers too)."""
    if PEER_DUMP_SIGNAL is not None:
        faulthandler.register(PEER_DUMP_SIGNAL, all_threads=True)


class _Deadline:
    """One bounded phase. Its state moves, under `lock`, from "armed" to "finished" (in time), or to
    "fired" (the watchdog decided), "signalled" (SIGALRM sent to the main thread) and "raised"."""

    def __init__(self, phase: str, seconds: float, on_expire: Callable[[], None] | None):
        self.phase = phase
        self.seconds = seconds
        self.on_expire = on_expire
        self.expires_at = time.monotonic() + seconds
        self.thread = threading.current_thread()
        self.interruptible = CAN_INTERRUPT and self.thread is threading.main_thread()
        self.previous_handler: Any = None
        self.lock = threading.Lock()
        self.state = "armed"
        self.error: SGLangTimeout | None = None

    def _raise(self) -> None:
        self.state = "raised"
        self.error = self.error or SGLangTimeout(self.phase, self.seconds)
        raise self.error

    # -- the phase's thread --------------------------------------------------------------------

    def install(self) -> None:
        if self.interruptible:
            self.previous_handler = signal.signal(signal.SIGALRM, self._on_sigalrm)

    def uninstall(self) -> None:
        if self.interruptible:
            signal.signal(signal.SIGALRM, signal.SIG_DFL if self.previous_handler is None else self.previous_handler)

    def _on_sigalrm(self, signum, frame) -> None:
        if self.state == "signalled":  # no lock: the handler may run while this thread holds it
            self._raise()
        _pass_on(self.previous_handler, signum, frame)  # not the kit's (pytest-timeout's alarm): its handler acts

    def finish(self) -> None:
        """At the phase's end. A phase that ran past the limit fails with SGLangTimeout, whatever
        it did meanwhile (returned just late, swallowed the interrupt, failed from a peer stopped)."""
        with self.lock:
            if self.state == "armed":
                self.state = "finished"
                return
            if self.state == "fired":  # back before the watchdog sent the signal: it sends none now
                self._raise()
        for _ in range(2000):  # the signal is on its way: its handler raises during one of these sleeps
            if self.state != "signalled":
                break
            time.sleep(0.001)
        self._raise()

    # -- the watchdog thread -------------------------------------------------------------------

    def expire(self) -> None:
        with self.lock:
            if self.state != "armed":
                return
            self.state = "fired"
        where = f" (the {self.phase} runs in thread 0x{self.thread.ident:016x})" if self.thread.ident else ""
        dump_stacks(
            f"sglang-runner: the runner's {self.phase} ran past the {self.seconds:g} s limit ({HOW_TO_RAISE}); every thread's stack{where}:"
        )
        if self.on_expire is not None:
            try:
                self.on_expire()
            except Exception:  # the dump and the failure matter more than the hook
                traceback.print_exc()
        with self.lock:
            if self.state != "fired":  # the phase came back meanwhile and failed itself
                return
            if self.interruptible:
                self.state = "signalled"
                signal.pthread_kill(self.thread.ident, signal.SIGALRM)
            else:
                sys.stderr.write(
                    f"sglang-runner: the {self.phase} cannot be interrupted on this thread; it fails when it returns\n"
                )


def _pass_on(handler: Any, signum: int, frame) -> None:
    """What SIGALRM would have done without the kit's handler."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # the default action: end the process
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


class _Watchdog:
    """The one thread that watches the armed deadline; started on first use, a daemon."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._armed: _Deadline | None = None
        self._thread: threading.Thread | None = None

    def arm(self, deadline: _Deadline) -> None:
        with self._changed:
            self._armed = deadline
            if self._thread is None or not self._thread.is_alive():  # a forked child has none
                self._thread = threading.Thread(target=self._watch, name="sglang-runner-timeout", daemon=True)
                self._thread.start()
            self._changed.notify()

    def disarm(self, deadline: _Deadline) -> None:
        with self._changed:
            if self._armed is deadline:
                self._armed = None
                self._changed.notify()

    def _watch(self) -> None:
        while True:
            with self._changed:
                deadline = self._armed
                left = None if deadline is None else deadline.expires_at - time.monotonic()
                if left is None or left > 0:
                    self._changed.wait(left)
                    continue
                self._armed = None
            deadline.expire()


_WATCHDOG = _Watchdog()
_current: _Deadline | None = None


class deadline:
    """Bound one phase to ``seconds`` (0: no limit): ``with deadline("build", 300): ...``.

    Inside a bounded phase that has not fired, the outer limit holds and this is a no-op.
    `on_expire` runs on the watchdog thread, after the dump and before the main thread is
    interrupted. The SGLangTimeout that leaves the block is a fresh one: the interrupted one's
    frames (deep in SGLang, holding the runner and its batches) are cleared, since pytest keeps
    a failed test's traceback; where the phase hung is in the dump."""

    def __init__(self, phase: str, seconds: float, on_expire: Callable[[], None] | None = None):
        self.phase = phase
        self.seconds = seconds
        self.on_expire = on_expire
        self._armed: _Deadline | None = None
        self._outer: _Deadline | None = None

    def __enter__(self) -> deadline:
        global _current
        self._outer = _current
        if not self.seconds or (self._outer is not None and self._outer.state == "armed"):
            return self
        self._armed = _current = _Deadline(self.phase, self.seconds, self.on_expire)
        self._armed.install()
        _WATCHDOG.arm(self._armed)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        __tracebackhide__ = True  # pytest shows the line that called into the phase, not this
        global _current
        armed, self._armed = self._armed, None
        if armed is None:
            return False
        try:
            _WATCHDOG.disarm(armed)
            armed.finish()
        except SGLangTimeout as late:  # the phase ran past the limit and came back (or the signal came now)
            exc = late
        finally:
            armed.uninstall()
            _current = self._outer
        if exc is None or exc is not armed.error:
            return False
        traceback.clear_frames(exc.__traceback__)
        raise SGLangTimeout(self.phase, self.seconds) from None
