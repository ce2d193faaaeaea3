"""Hang protection (--sglang-timeout): real hangs in a build, a forward, a teardown and a TP peer.

One inner pytest session (a subprocess) hangs at each phase in turn, in SGLang's own call path:
the model's ``__init__`` during a build, its ``forward`` during a forward, SGLang's
``destroy_model_parallel`` during a teardown (at a rebuild and at the session's end), and the
model's forward on TP rank 1 only. Each test below checks one of them in what the inner session
recorded: the phase fails within its limit, with every thread's stack on stderr and a message
naming the phase, the limit and the option; the next test gets a fresh runner; nothing is left.
One session keeps the cost to one SGLang import (about 45 s on 2 CPU cores, 25 s more with TP).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import psutil
import pytest
import torch

from pytest_sglang_runner import timeouts
from pytest_sglang_runner.errors import SpecError
from pytest_sglang_runner.options import RunnerSpec

ON_GPU = torch.cuda.is_available()
TP_HANG = not ON_GPU or torch.cuda.device_count() >= 2
SESSION_LIMIT_S = 5  # --sglang-timeout of the inner session; its hangs use the marker's 3 s
HOW_TO_RAISE = "--sglang-timeout / @pytest.mark.sglang(timeout=...)"


# ---------------------------------------------------------------------------------------------
# The deadline itself, in this process (no SGLang)
# ---------------------------------------------------------------------------------------------


def hang_here():
    time.sleep(1000)


def test_a_hang_is_interrupted_with_every_threads_stack(capfd):
    handler = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(timeouts.SGLangTimeout) as raised:
        with timeouts.deadline("forward", 0.5):
            hang_here()
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith("the runner's forward ran past the 0.5 s limit") and HOW_TO_RAISE in str(
        raised.value
    )
    stderr = capfd.readouterr().err
    assert "Current thread 0x" in stderr and "Thread 0x" in stderr and "in hang_here" in stderr
    assert signal.getsignal(signal.SIGALRM) is handler


def test_another_sigalrm_timer_keeps_working_around_a_phase():
    """pytest-timeout's signal method: its handler gets its own alarm during a phase, its itimer
    is never touched, and its handler is back afterwards."""
    alarms = []

    def other_timer(signum, frame):
        alarms.append(time.monotonic())
        raise RuntimeError("the other timer's timeout")

    outer_handler, outer_timer = signal.signal(signal.SIGALRM, other_timer), signal.getitimer(signal.ITIMER_REAL)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(RuntimeError, match="the other timer's"):
            with timeouts.deadline("build", 10):
                hang_here()
        assert signal.getsignal(signal.SIGALRM) is other_timer
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(timeouts.SGLangTimeout):
            with timeouts.deadline("build", 0.2):
                hang_here()
        assert signal.getsignal(signal.SIGALRM) is other_timer and 0 < signal.getitimer(signal.ITIMER_REAL)[0] < 1.0
        with pytest.raises(RuntimeError, match="the other timer's"):
            hang_here()
        assert len(alarms) == 2
    finally:  # this run's own pytest-timeout, if any, gets its timer back
        signal.signal(signal.SIGALRM, outer_handler)
        signal.setitimer(signal.ITIMER_REAL, *outer_timer)


def test_off_the_main_thread_the_stacks_are_dumped_and_the_phase_fails_when_it_returns(capfd):
    outcome = []

    def slow_phase():
        try:
            with timeouts.deadline("forward", 0.2):
                time.sleep(1.0)
            outcome.append("returned")
        except timeouts.SGLangTimeout:
            outcome.append("timed out")

    thread = threading.Thread(target=slow_phase)
    thread.start()
    thread.join()
    assert outcome == ["timed out"]
    assert "cannot be interrupted on this thread" in capfd.readouterr().err


def test_the_timeout_is_no_part_of_the_runner_config():
    assert RunnerSpec().with_overrides(timeout=30, dtype="float16") == RunnerSpec().with_overrides(dtype="float16")
    assert timeouts.split_limit({"timeout": "30", "tp": 2}) == (30.0, {"tp": 2})
    with pytest.raises(SpecError, match="--sglang-timeout 'soon': expected a number of seconds >= 0"):
        RunnerSpec().with_overrides(timeout="soon")


# ---------------------------------------------------------------------------------------------
# Real hangs in a real runner
# ---------------------------------------------------------------------------------------------

HANG_CONFTEST = '''
"""Hangs in SGLang's call path, armed by the tests; every report recorded for the outer test."""
import json, os, time

import pytest

from pytest_sglang_runner.plugin import factory_key

ARMED = set()  # steps whose next call hangs once
SEEN = {}  # what a test saw, for the test after it


def hang_in_model_init():
    time.sleep(1000)


def hang_in_model_forward(*args, **kwargs):
    time.sleep(1000)


def hang_in_destroy_model_parallel():
    time.sleep(1000)


def _hang_when_armed(step, hang, original):
    def maybe_hang(*args, **kwargs):
        if step in ARMED:
            ARMED.discard(step)
            hang()
        return original(*args, **kwargs)

    return maybe_hang


@pytest.fixture(scope="session")
def arm(runner_factory):
    """After a first build (it imports SGLang, within the marker's limit): the model's __init__ (a
    build) and SGLang's destroy_model_parallel (a teardown) hang once when armed."""
    from sglang.srt.distributed import parallel_state

    from pytest_sglang_runner.models import roberta_mlm

    runner_factory.get(timeout=300)
    model = roberta_mlm.RobertaForMaskedLM
    model.__init__ = _hang_when_armed("build", hang_in_model_init, model.__init__)
    parallel_state.destroy_model_parallel = _hang_when_armed("teardown", hang_in_destroy_model_parallel, parallel_state.destroy_model_parallel)
    return ARMED.add


def pytest_sessionfinish(session):
    """The teardown at the session's end hangs too, whichever test ran last."""
    session.config.stash[factory_key].get()
    ARMED.add("teardown")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    entry = dict(test=item.name, when=report.when, outcome=report.outcome, seconds=report.duration, message=report.longreprtext, stderr=report.capstderr)
    with open(os.environ["HANG_RECORD"], "a") as file:
        file.write(json.dumps(entry) + "\\n")
    return report
'''

HANG_TESTS = '''
import os

import psutil
import pytest

from conftest import SEEN, hang_in_model_forward

PROMPT = [[0, 5, 6, 2]]
TP2 = dict(model=os.environ["HANGING_PEER_MODEL"], tp=2, dtype=os.environ["HANG_DTYPE"])
TP = pytest.mark.skipif(os.environ["HANG_TP"] != "1", reason="TP=2 on CUDA needs 2 GPUs")


def lock_files():
    directory = os.environ["PYTEST_SGLANG_PORT_LOCK_DIR"]
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def assert_fresh_runner(live, factory):
    """This test's runner was built for it, once, after the hang, and runs."""
    assert len(factory.records) == SEEN["builds"] + 1 and live.record is factory.records[-1]
    assert len(lock_files()) == 2  # its own two ports: the hung runner's are free
    live.forward(PROMPT)


def test_first_build(arm, sglang_live, runner_factory):
    SEEN["first"] = (sglang_live, len(runner_factory.records))


@pytest.mark.sglang(timeout=60)
def test_timeout_in_marker_reuses_the_runner(sglang_live, runner_factory):
    assert (sglang_live, len(runner_factory.records)) == SEEN["first"]
    assert sglang_live.forward.timeout_s == 60


@pytest.mark.sglang(timeout=3)
def test_forward_hang(runner, sglang_forward, runner_factory):
    SEEN["builds"] = len(runner_factory.records)
    runner.model.forward = hang_in_model_forward
    sglang_forward(PROMPT)


def test_fresh_runner_after_forward_hang(sglang_live, runner_factory):
    assert_fresh_runner(sglang_live, runner_factory)


@pytest.fixture
def hang_in_next_build(runner_factory, arm):
    runner_factory.close()
    SEEN["builds"] = len(runner_factory.records)
    arm("build")


@pytest.mark.sglang(timeout=3)
def test_build_hang(hang_in_next_build, runner):
    pass


@pytest.mark.sglang(timeout=3)
def test_the_hang_is_remembered_within_its_limit(runner):
    pass


def test_fresh_runner_after_build_hang(sglang_live, runner_factory):
    assert_fresh_runner(sglang_live, runner_factory)


@pytest.fixture
def hang_in_next_teardown(runner_factory, arm):
    runner_factory.get()  # the default config's runner: the test's own config replaces it
    SEEN["builds"] = len(runner_factory.records)
    arm("teardown")


@pytest.mark.sglang(max_total_tokens=2048, timeout=3)
def test_teardown_hang(hang_in_next_teardown, runner):
    pass


@pytest.mark.sglang(max_total_tokens=2048)
def test_fresh_runner_after_teardown_hang(sglang_live, runner_factory):
    assert_fresh_runner(sglang_live, runner_factory)


@TP
@pytest.mark.sglang(**TP2, timeout=300)
def test_tp_build(sglang_live):
    sglang_live.forward(PROMPT)


@TP
@pytest.mark.sglang(**TP2, timeout=3)
def test_tp_peer_hang(sglang_live):
    SEEN["peers"] = [process.pid for process in sglang_live.peers.processes]
    open(os.environ["HANG_FLAG"], "w").close()
    sglang_live.forward(PROMPT)


@TP
@pytest.mark.sglang(**TP2)
def test_no_peer_left_after_the_peer_hang(runner_factory):
    assert runner_factory.live is None and lock_files() == []
    assert SEEN["peers"] and not any(psutil.pid_exists(pid) for pid in SEEN["peers"])
'''

HANGING_PEER_MODEL = '''
"""A user's model class whose forward hangs on TP rank 1 once the test says so (SGLANG_EXTERNAL_MODEL_PACKAGE)."""
import os, time

import torch.distributed
from sglang.srt.models.llama import LlamaForCausalLM


def hang_in_peer_forward():
    time.sleep(1000)


class HangingPeerForCausalLM(LlamaForCausalLM):
    def forward(self, *args, **kwargs):
        if torch.distributed.get_rank() == 1 and os.path.exists(os.environ["HANG_FLAG"]):
            hang_in_peer_forward()
        return super().forward(*args, **kwargs)


EntryClass = [HangingPeerForCausalLM]
'''


@dataclass
class HungSession:
    output: str
    returncode: int
    seconds: float
    reports: dict  # (test name, phase) -> what the inner session recorded
    processes_left: list
    lock_files_left: int

    def report(self, test: str, when: str) -> dict:
        return self.reports.get((test, when), {"outcome": "missing", "seconds": 0.0, "message": "", "stderr": ""})


def _processes_of_session(session_id: int) -> list[str]:
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(process.pid) == session_id and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.info["cmdline"] or []))
        except (OSError, psutil.Error):
            pass
    return left


@pytest.fixture(scope="module")
def hung_session(tmp_path_factory, embedded_llama) -> HungSession:
    """The inner session, run once for the tests of this module."""
    root = tmp_path_factory.mktemp("hangs")
    (root / "conftest.py").write_text(HANG_CONFTEST)
    (root / "test_hangs.py").write_text(HANG_TESTS)
    (root / "hanging_models").mkdir()
    (root / "hanging_models" / "__init__.py").write_text("")
    (root / "hanging_models" / "models.py").write_text(HANGING_PEER_MODEL)
    model = root / "hanging-peer-model"
    shutil.copytree(embedded_llama, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["HangingPeerForCausalLM"]}))
    record, lock_dir = root / "record.jsonl", root / "port-locks"
    env = dict(
        os.environ,
        HANG_RECORD=str(record),
        HANG_FLAG=str(root / "hang-now"),
        HANG_TP="1" if TP_HANG else "0",
        HANG_DTYPE="bfloat16" if ON_GPU else "auto",  # the CUDA RMSNorm has no float32 kernel
        HANGING_PEER_MODEL=str(model),
        SGLANG_EXTERNAL_MODEL_PACKAGE="hanging_models",
        PYTEST_SGLANG_PORT_LOCK_DIR=str(lock_dir),
        PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore",
        f"--sglang-timeout={SESSION_LIMIT_S}",
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    seconds = time.monotonic() - started
    time.sleep(1)  # processes killed at the end are reaped by their parent's exit
    entries = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return HungSession(
        output=output,
        returncode=process.returncode,
        seconds=seconds,
        reports={(entry["test"], entry["when"]): entry for entry in entries},
        processes_left=_processes_of_session(process.pid),
        lock_files_left=len(list(lock_dir.glob("*.lock"))) if lock_dir.exists() else 0,
    )


def assert_timed_out(session: HungSession, test: str, when: str, phase: str, limit: int, hanging_function: str):
    """Failed within a bounded time, naming the phase, the limit and the option, with the stacks."""
    report = session.report(test, when)
    assert report["outcome"] == "failed", (report, session.output[-5000:])
    assert report["seconds"] < limit + 30, report["seconds"]
    assert (
        f"the runner's {phase} ran past the {limit} s limit" in report["message"] and HOW_TO_RAISE in report["message"]
    )
    stderr = report["stderr"]
    assert f"sglang-runner: the runner's {phase} ran past the {limit} s limit" in stderr
    assert re.search(r"^Thread 0x[0-9a-f]+ \(most recent call first\):", stderr, re.M) and "Current thread 0x" in stderr
    assert f"in {hanging_function}" in stderr, stderr[-5000:]


def assert_passed(session: HungSession, test: str):
    report = session.report(test, "call")
    assert report["outcome"] == "passed", (report, session.output[-5000:])


def test_a_forward_that_hangs_fails_with_the_stacks_and_the_next_test_gets_a_fresh_runner(
    hung_session, record_property
):
    assert_timed_out(hung_session, "test_forward_hang", "call", "forward", 3, "hang_in_model_forward")
    assert_passed(hung_session, "test_fresh_runner_after_forward_hang")
    record_property("forward_timeout_seconds", round(hung_session.report("test_forward_hang", "call")["seconds"], 1))


def test_a_build_that_hangs_fails_with_the_stacks_is_remembered_and_a_longer_limit_builds_again(
    hung_session, record_property
):
    assert_timed_out(hung_session, "test_build_hang", "setup", "build", 3, "hang_in_model_init")
    assert "[@pytest.mark.sglang(timeout=3)]" in hung_session.report("test_build_hang", "setup")["message"]
    remembered = hung_session.report("test_the_hang_is_remembered_within_its_limit", "setup")
    assert remembered["outcome"] == "failed" and remembered["seconds"] < 1, remembered
    assert "this config's build ran past the 3 s limit earlier in this session" in remembered["message"]
    assert_passed(hung_session, "test_fresh_runner_after_build_hang")  # its limit is longer: tried again
    record_property("build_timeout_seconds", round(hung_session.report("test_build_hang", "setup")["seconds"], 1))


def test_a_teardown_that_hangs_frees_the_ports_and_the_next_build_works(hung_session, record_property):
    assert_timed_out(hung_session, "test_teardown_hang", "setup", "teardown", 3, "hang_in_destroy_model_parallel")
    assert_passed(hung_session, "test_fresh_runner_after_teardown_hang")
    record_property("teardown_timeout_seconds", round(hung_session.report("test_teardown_hang", "setup")["seconds"], 1))


def test_a_teardown_that_hangs_at_the_session_end_fails_the_run(hung_session):
    after_the_tests = hung_session.output[hung_session.output.rindex("short test summary info") :]
    assert (
        f"sglang-runner: the runner's teardown ran past the {SESSION_LIMIT_S} s limit ({HOW_TO_RAISE}); every thread's stack"
        in after_the_tests
    )
    assert "in hang_in_destroy_model_parallel" in after_the_tests
    assert (
        f"sglang-runner: the runner's teardown ran past the {SESSION_LIMIT_S} s limit (every thread's stack is on stderr); raise the limit with {HOW_TO_RAISE}, or 0 for none (TP peers stopped, ports released)"
        in after_the_tests
    )
    assert hung_session.returncode == pytest.ExitCode.TESTS_FAILED


def test_the_timeout_in_the_marker_does_not_rebuild_the_runner(hung_session):
    """The marked test gets the previous test's LiveRunner, with no build in between, and its limit."""
    assert_passed(hung_session, "test_timeout_in_marker_reuses_the_runner")


@pytest.mark.skipif(not TP_HANG, reason="TP=2 on CUDA needs 2 GPUs")
def test_a_hung_tp_peer_dumps_its_stack_and_is_stopped(hung_session, record_property):
    assert_passed(hung_session, "test_tp_build")
    report = hung_session.report("test_tp_peer_hang", "call")
    assert report["outcome"] == "failed" and "the runner's forward ran past the 3 s limit" in report["message"], report
    assert report["seconds"] < 3 + 30
    assert "the stacks of TP rank(s) 1 follow" in report["stderr"]
    assert "in hang_in_peer_forward" in hung_session.output  # written by the peer process itself
    assert_passed(hung_session, "test_no_peer_left_after_the_peer_hang")
    record_property("tp_peer_timeout_seconds", round(report["seconds"], 1))


def test_the_hung_session_leaves_no_process_and_no_port_lock(hung_session, record_property):
    record_property("hung_session_seconds", round(hung_session.seconds, 1))
    assert hung_session.processes_left == []
    assert hung_session.lock_files_left == 0
    assert len({test for test, _ in hung_session.reports}) == 12, hung_session.output[-5000:]  # every inner test ran
