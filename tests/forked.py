"""Inner pytest sessions forked from a process that has imported SGLang already (the kit's suite only).

Most of the suite's tests run a real pytest session in a process of its own; on CI's 2 cores each
such process spent 15-20 s importing SGLang before its first test. A zygote, started once per
xdist worker, imports SGLang the way the kit does (``prepare_process`` then ``import_sglang``) and
then forks one child per session: a real process with its own pid, environment, working directory,
``sys.path``, output files, exit code and ``atexit`` handlers, that finds SGLang already imported,
as a project whose conftest imports SGLang does.

Used on CPU only (a GPU run starts every session fresh: CUDA must not be touched before a fork),
and never for what an import changes: ``-W error`` on SGLang's import warnings, a run that must
not import SGLang, a model package SGLang reads at import, xdist workers (execnet starts those).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# The zygote: `python tests/forked.py FD`, talking JSON lines over the socket FD
# ---------------------------------------------------------------------------------------------


def _serve(fd: int) -> None:
    from pytest_sglang_runner.sglang_compat import process

    process.prepare_process("cpu")
    process.import_sglang()  # torch and transformers with it
    _not_to_be_rewritten()

    base_path = [p for p in sys.path if p != str(HERE) and p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    channel = socket.socket(fileno=fd)
    reader = channel.makefile("r")
    while True:
        ready, _, _ = select.select([channel], [], [], 0.1)
        if ready:
            line = reader.readline()
            if not line:
                break
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                reader.close()  # the socket closes with its last file
                channel.close()
                _child(request, base_path)
            channel.sendall((json.dumps({"pid": pid}) + "\n").encode())
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            channel.sendall((json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n").encode())


def _not_to_be_rewritten() -> None:
    """pytest rewrites the asserts of its entry-point plugins' packages, and warns in each session
    about one imported before it could (SGLang imports anyio, which has a pytest plugin). A real
    session whose conftest imports SGLang imports them after pytest started, so it never warns:
    mark those already imported here as not to be rewritten (pytest's PYTEST_DONT_REWRITE)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="pytest11"):
        module = sys.modules.get(entry.module.split(".")[0])
        if module is not None and "PYTEST_DONT_REWRITE" not in (module.__doc__ or ""):
            module.__doc__ = f"{module.__doc__ or ''}\nPYTEST_DONT_REWRITE"


def _child(request: dict, base_path: list[str]) -> None:
    """In the fork: become `python -m pytest ARGS` run in ``cwd`` with ``env``; never returns."""
    code = 1
    try:
        if request["new_session"]:
            os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        python_path = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *python_path, *base_path]
        if "OMP_NUM_THREADS" in request["env"]:
            import torch

            torch.set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = (
            out
            if request["stderr"] == request["stdout"]
            else os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        )
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in {null, out, err}:  # a started process has only 0, 1 and 2 of these
            os.close(fd)
        sys.argv = [pytest.__file__, *request["args"]]
        code = int(pytest.main(request["args"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = int(pytest.ExitCode.INTERRUPTED)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()  # a process that exits runs them; os._exit would not
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# ---------------------------------------------------------------------------------------------
# The test process's end
# ---------------------------------------------------------------------------------------------


class Zygote:
    """One per xdist worker: started on first use, gone with the worker (its socket closes)."""

    def __init__(self, env: dict, log: Path):
        ours, theirs = socket.socketpair()
        with open(log, "w") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__)), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        theirs.close()
        self.channel = ours
        self.lock = threading.Lock()
        self.changed = threading.Condition()
        self.pids: list[int] = []
        self.codes: dict[int, int] = {}
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()

    def _read(self) -> None:
        for line in self.channel.makefile("r"):
            message = json.loads(line)
            with self.changed:
                if "code" in message:
                    self.codes[message["pid"]] = message["code"]
                else:
                    self.pids.append(message["pid"])
                self.changed.notify_all()
        with self.changed:
            self.pids.append(-1)  # the zygote is gone
            self.changed.notify_all()

    def start(self, args, *, cwd, env, stdout, stderr=None, new_session=False) -> Forked:
        request = dict(
            args=[str(a) for a in args],
            cwd=str(cwd),
            env=dict(env),
            stdout=str(stdout),
            stderr=str(stderr or stdout),
            new_session=new_session,
        )
        with self.lock, self.changed:
            self.channel.sendall((json.dumps(request) + "\n").encode())
            self.changed.wait_for(lambda: self.pids)
            pid = self.pids.pop(0)
        if pid < 0:
            raise RuntimeError("the zygote ended")
        return Forked(pid, self, Path(stdout))

    def close(self) -> None:
        self.channel.shutdown(socket.SHUT_RDWR)  # the reader's file keeps the socket open otherwise
        self.channel.close()
        self.process.wait(30)


class Forked:
    """A forked session: what the tests use of `subprocess.Popen`."""

    def __init__(self, pid: int, zygote: Zygote, stdout: Path):
        self.pid, self.zygote, self.stdout_path = pid, zygote, stdout

    @property
    def returncode(self) -> int | None:
        return self.zygote.codes.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self.zygote.changed:
            finished = self.zygote.changed.wait_for(lambda: self.pid in self.zygote.codes, timeout)
        if not finished:
            self.kill()  # as subprocess.run does: a session past its limit does not outlive the test
            raise subprocess.TimeoutExpired(f"forked pytest {self.pid}", timeout)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")


class Fresh:
    """The same interface over a fresh `python -m pytest` process (a GPU box: no fork after CUDA)."""

    def __init__(self, args, *, cwd, env, stdout, stderr=None, new_session=False):
        self.stdout_path = Path(stdout)
        with open(stdout, "w") as out:
            err = open(stderr, "w") if stderr and stderr != stdout else None
            try:
                self.popen = subprocess.Popen(
                    [sys.executable, "-m", "pytest", *map(str, args)],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err or subprocess.STDOUT,
                    start_new_session=new_session,
                )
            finally:
                if err:
                    err.close()
        self.pid = self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise

    def kill(self) -> None:
        self.popen.kill()

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")


def runpytest(pytester: pytest.Pytester, zygote: Zygote, *args, timeout: float | None = None) -> pytest.RunResult:
    """`pytester.runpytest_subprocess`, forked from the zygote."""
    base = pytester.path / f"runpytest-{time.monotonic_ns()}"
    base.mkdir()
    args = (f"--basetemp={base}", *args)
    for plugin in pytester.plugins:
        args = ("-p", plugin, *args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
    out, err = pytester.path / "stdout", pytester.path / "stderr"
    started = time.monotonic()
    forked = zygote.start(args, cwd=os.getcwd(), env=env, stdout=out, stderr=err)
    try:
        code = forked.wait(timeout)
    except subprocess.TimeoutExpired:
        forked.kill()
        forked.wait(30)
        raise pytester.TimeoutExpired(
            f"{timeout} second timeout expired running: pytest {' '.join(map(str, args))}"
        ) from None
    outlines = out.read_text(errors="replace").splitlines()
    errlines = err.read_text(errors="replace").splitlines()
    print("\n".join(outlines))
    print("\n".join(errlines), file=sys.stderr)
    return pytest.RunResult(code, outlines, errlines, time.monotonic() - started)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
