"""The ``sglang_engine`` and ``sglang_server`` fixtures: SGLang's own Engine and HTTP server, with
the runner's settings, agree with the runner; they leave nothing behind and never hang.

The RoBERTa tests use a config of their own (a smaller KV budget), so under xdist their runner,
Engine and server live on one worker instead of one of each per worker.
"""

import asyncio
import multiprocessing
import os
import re
import signal
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from pytest_sglang_runner import assert_logprobs_close, assert_tokens_equal
from pytest_sglang_runner.plugin import services_key

ON_GPU = torch.cuda.is_available()
LLAMA = pytest.mark.sglang(model="embedded-llama", dtype="bfloat16" if ON_GPU else "float32")
ROBERTA = pytest.mark.sglang(max_total_tokens=2048)
PROMPTS = ["the film was", "It was a", "a bad film"]
INNER_ARGS = ["-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]


def _processes_in(groups) -> list:
    """Every running process whose process group is one of ``groups``: not the zombies of killed
    ones (exited, their sockets closed and memory freed; reaping them is init's job, and some
    inits take seconds)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getpgid(process.pid) in groups and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, ProcessLookupError):
            pass
    return found


def _group_listeners(pid: int) -> list:
    """Listening TCP sockets of every process in ``pid``'s process group."""
    listeners = []
    for process in _processes_in({os.getpgid(pid)}):
        try:
            listeners += [c.laddr for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return listeners


@ROBERTA
def test_engine_embeddings_equal_the_runners(sglang_forward, sglang_engine):
    ours = sglang_forward.embeddings(PROMPTS).float().cpu()
    theirs = sglang_engine.encode(PROMPTS)
    assert ours.shape == theirs.shape == (len(PROMPTS), ours.shape[1])
    torch.testing.assert_close(theirs, ours, atol=1e-5 if not ON_GPU else 2e-3, rtol=0)
    assert torch.allclose(theirs.norm(dim=1), torch.ones(len(PROMPTS)), atol=1e-5)  # SGLang's pooler normalises


@LLAMA
def test_engine_greedy_generation_agrees_with_the_runners(sglang_forward, sglang_engine):
    ours = sglang_forward.generate(PROMPTS, max_new_tokens=12, top_logprobs=5)
    theirs = sglang_engine.generate(PROMPTS, max_new_tokens=12, top_logprobs=5)
    assert all(g.prompt_logprobs and g.output_logprobs for g in theirs)
    assert_tokens_equal(ours, theirs, names=("runner", "engine"))
    assert_logprobs_close(ours, theirs, names=("runner", "engine"))
    assert [g.finish_reason for g in theirs] == [g.finish_reason for g in ours]
    assert any(g.text for g in ours) and [g.text for g in theirs] == [g.text for g in ours]  # SGLang's detokenizer's


# docs/services.md's example, as written (tests/test_doc_snippets.py checks that it is here): on
# CPU its config is LLAMA's, so it reuses that Engine and server; a GPU runs LLAMA in bfloat16.
@pytest.mark.skipif(ON_GPU, reason="the page's example is float32: on a GPU it would start another Engine")
@pytest.mark.sglang(model="embedded-llama", dtype="float32")
def test_runner_decodes_like_the_engine(sglang_forward, sglang_engine):
    prompts = ["the film was", "It was a"]
    ours = sglang_forward.generate(prompts, max_new_tokens=12, top_logprobs=5)
    theirs = sglang_engine.generate(prompts, max_new_tokens=12, top_logprobs=5)
    assert_tokens_equal(ours, theirs, names=("runner", "engine"))
    assert_logprobs_close(ours, theirs, names=("runner", "engine"))


@pytest.mark.skipif(ON_GPU, reason="the page's example is float32: on a GPU it would start another server")
@pytest.mark.sglang(model="embedded-llama", dtype="float32")
def test_runner_decodes_like_the_server(sglang_forward, sglang_server):
    ours = sglang_forward.generate(["the film was"], max_new_tokens=12)
    theirs = sglang_server.completions(["the film was"], max_new_tokens=12)
    assert_tokens_equal(ours, theirs, names=("runner", "server"))
    assert sglang_server.client.get("/health").status_code == 200


@ROBERTA
def test_server_embeddings_equal_the_runners(sglang_forward, sglang_server):
    ours = sglang_forward.embeddings(PROMPTS).float().cpu()
    torch.testing.assert_close(sglang_server.embeddings(PROMPTS), ours, atol=1e-5 if not ON_GPU else 2e-3, rtol=0)


@LLAMA
def test_server_completions_agree_with_the_runners(sglang_forward, sglang_server):
    ours = sglang_forward.generate(PROMPTS, max_new_tokens=12, top_logprobs=5)
    theirs = sglang_server.completions(PROMPTS, max_new_tokens=12, top_logprobs=5)
    assert_tokens_equal(ours, theirs, names=("runner", "server"))
    assert_logprobs_close(ours, theirs, names=("runner", "server"))
    assert any(g.text for g in ours) and [g.text for g in theirs] == [g.text for g in ours]  # the server's own text


def test_completion_text_is_the_servers_own_not_a_decode_of_its_tokens(embedded_llama):
    """The negative control of the text comparison above: `completions` keeps the text the server
    returned (less the echoed prompt), so a server whose text disagrees with its tokens shows it."""
    from transformers import AutoTokenizer

    from pytest_sglang_runner.services import ServiceError
    from pytest_sglang_runner.sglang_compat.serving import generations_from_completion

    tokenizer = AutoTokenizer.from_pretrained(embedded_llama)
    prompt = tokenizer("the film was")["input_ids"]
    output = tokenizer(" good", add_special_tokens=False)["input_ids"]
    echoed = tokenizer.decode(prompt, skip_special_tokens=True)
    entries = {
        "token_logprobs": [None] + [-0.5] * (len(prompt) + len(output) - 1),
        "top_logprobs": [None] + [{"the": -0.5}] * (len(prompt) + len(output) - 1),
    }

    def answer(text):
        choice = {"index": 0, "text": text, "token_ids": output, "logprobs": entries, "finish_reason": "length"}
        return {"choices": [choice]}

    (result,) = generations_from_completion([prompt], answer(echoed + " not what the tokens say"), tokenizer)
    assert result.output_ids == output and result.text == " not what the tokens say"
    assert tokenizer.decode(output, skip_special_tokens=True) != result.text
    with pytest.raises(ServiceError, match="does not start with the prompt it echoes"):
        generations_from_completion([prompt], answer("no echo" + echoed), tokenizer)


@LLAMA
def test_the_server_is_plain_http_on_loopback_only(sglang_server):
    """The ready client reaches SGLang's own routes; every socket its processes listen on is 127.0.0.1."""
    assert sglang_server.client.get("/health").status_code == 200
    models = sglang_server.client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [sglang_server.model_path]
    listeners = _group_listeners(sglang_server.process.pid)
    assert any(a.port == sglang_server.port for a in listeners)
    assert [a for a in listeners if a.ip != "127.0.0.1"] == []


def _process_state() -> dict:
    """What an Engine started in this process would change: SGLang's ``_set_envs_and_config`` (the
    SIGQUIT handler, the ``spawn`` start method, environment variables, the open-files limit) and
    the event loop policy it sets."""
    import resource

    return {
        "signal handlers": {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT)},
        "event loop policy": type(asyncio.get_event_loop_policy()),
        "start method": multiprocessing.get_start_method(allow_none=True),
        "environment": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},  # pytest's own
        "open files limit": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


@pytest.fixture
def state_before_the_engine():
    """The pytest process's state and the time, before ``sglang_engine`` starts the Engine (a test
    lists this fixture first: pytest sets up fixtures of one scope in the order they are asked for)."""
    return _process_state(), time.time()


# A config of its own, so that this test's sglang_engine starts an Engine after the state is
# recorded (with the other tests' config it would hand back the Engine an earlier test started).
OWN_ENGINE = pytest.mark.sglang(**LLAMA.kwargs, max_total_tokens=2048)


@OWN_ENGINE
def test_the_engine_changes_nothing_in_the_pytest_process(state_before_the_engine, sglang_engine):
    """An in-process Engine would replace these handlers, policy, start method and environment
    variables; hosted, the test's stay as they were before the Engine started."""
    before, started_after = state_before_the_engine
    assert psutil.Process(sglang_engine.pid).create_time() >= started_after - 2  # started in this window
    assert sglang_engine.call("get_server_info")["model_path"] == sglang_engine.model_path
    after = _process_state()
    for what in before:
        assert after[what] == before[what], what
    assert [a for a in _group_listeners(sglang_engine.pid) if a.ip != "127.0.0.1"] == []
    OWN_ENGINE_PIDS.append(sglang_engine.pid)


OWN_ENGINE_PIDS = []


@OWN_ENGINE  # the same config, so the same xdist group: it runs after the test above, on its worker
def test_an_engine_no_later_test_needs_is_stopped_after_its_last_test(runner_factory, request):
    """No test after the one above asks for its Engine: it was stopped at that test's teardown,
    and its record says how much memory that gave back."""
    (pid,) = OWN_ENGINE_PIDS
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    records = [r for r in request.config.stash[services_key].records if r.settings.endswith("max_total_tokens=2048")]
    assert records and records[-1].freed_mib > 100  # the Engine's process tree (an import of SGLang alone is more)


# ---------------------------------------------------------------------------------------------
# Deaths, failed starts and the end of the session, in inner sessions of their own
# ---------------------------------------------------------------------------------------------

LIFECYCLE_TESTS = """
import json, os, signal
import psutil
import pytest
from pytest_sglang_runner.services import ServiceError, ServiceRestarted

def _record(pid):
    with open(os.environ["SERVICE_PIDS"], "a") as file:
        file.write(json.dumps([pid, os.getpgid(pid)]) + "\\n")

def _running_in_group(group):
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (psutil.Error, ProcessLookupError):
            pass
    return found

def test_server_killed_mid_test(sglang_server):
    _record(sglang_server.process.pid)
    assert len(sglang_server.completions(["the film"], max_new_tokens=2)) == 1
    os.kill(sglang_server.process.pid, signal.SIGKILL)  # the leader only: its children are orphaned
    with pytest.raises(ServiceError, match="did not answer POST /v1/completions"):
        sglang_server.completions(["the film"], max_new_tokens=2)
    # Its children may outlive it (orphans the next test's setup must stop) or end themselves
    # (SGLang's schedulers watch their parent): which, and how fast, is a race not to assert on.

def test_next_test_gets_a_restarted_server(sglang_server):
    with open(os.environ["SERVICE_PIDS"]) as file:
        killed = json.loads(file.readline())[1]
    assert _running_in_group(killed) == []  # stopped (in this test's setup) before its stop returned
    _record(sglang_server.process.pid)
    assert len(sglang_server.completions(["the film"], max_new_tokens=2)) == 1

def test_engine_killed_mid_test(sglang_engine):
    _record(sglang_engine.pid)
    os.killpg(sglang_engine.pid, signal.SIGKILL)
    with pytest.raises(ServiceError, match=r"SGLang Engine \\(pid \\d+\\) ended before it was done with generate; it was killed by signal 9"):
        sglang_engine.generate(["the film"], max_new_tokens=2)

def test_next_test_gets_a_restarted_engine(sglang_engine):
    _record(sglang_engine.pid)
    assert len(sglang_engine.generate(["the film"], max_new_tokens=2)) == 1

@pytest.mark.sglang(server_args={"tokenizer_path": "/nonexistent/tokenizer"})
def test_a_server_that_cannot_start(sglang_server):
    pass

@pytest.mark.sglang(server_args={"tokenizer_path": "/nonexistent/tokenizer"})
def test_the_failure_is_remembered(sglang_server):
    pass

def test_a_runner_of_the_default_config(runner):
    pass

@pytest.mark.sglang(max_total_tokens=2048)
def test_a_runner_of_a_config_that_differs_only_in_its_kv_budget(runner):
    pass
"""

# The summary's line for an Engine's or server's config: its starts, then its stops.
SERVICE_LINE = r"^sglang-runner: SGLang [\d.]+ {service} for \S*embedded-llama on \S+, \w+, \w+ attention, tp 1{settings}: {times}$"


def test_deaths_and_failed_starts_give_clear_errors_and_leave_nothing(
    pytester, runpytest_forked, tmp_path, embedded_llama, monkeypatch, record_property
):
    """A server or Engine killed mid-test fails that test at once, naming the death; the next test
    gets a fresh one (with a `ServiceRestarted` warning); a server that cannot start fails its test
    with the end of its log, once per config; at the end no process of any of them is left. The
    same run checks the terminal: the start's progress lines, live; the summary's line per config
    (two runner configs that differ only in their KV budget, too) with each service's start and
    stop times, a killed one's stop under 2 s."""
    pids = tmp_path / "pids.jsonl"
    monkeypatch.setenv("SERVICE_PIDS", str(pids))
    pytester.makepyfile(test_lifecycle=LIFECYCLE_TESTS)
    dtype = ["--sglang-dtype=bfloat16"] if ON_GPU else []
    result = runpytest_forked(*INNER_ARGS, f"--sglang-model={embedded_llama}", *dtype, "-rA", timeout=900)
    output = result.stdout.str()
    result.assert_outcomes(passed=6, errors=2, warnings=2)
    for name in ("sglang_server", "sglang_engine"):
        assert output.count(f"ServiceRestarted: {name}: the last one ended since the previous test (pid ") == 1, output
    assert "SGLang server (pid" in output and "ended before healthy at http://127.0.0.1:" in output
    assert "last lines of its log" in output and "/nonexistent/tokenizer" in output
    recorded = [tuple(map(int, line.strip("[]\n").split(","))) for line in pids.read_text().splitlines()]
    assert len({pid for pid, _ in recorded}) == 4  # two servers, two Engines
    assert [p.info for p in _processes_in({group for _, group in recorded})] == []
    record_property("service_processes_left", 0)

    # While a start runs, the terminal says what it waits for: live lines, written before the
    # report's sections (captured, they would be in -rA's sections of the tests' output).
    sections = output.index("= ERRORS =")
    for line in (
        r"sglang-runner: starting SGLang server for \S*embedded-llama on \S+, \w+, \w+ attention, tp 1$",
        r"sglang-runner: SGLang server \(pid \d+\) at 0 s: importing SGLang$",
        r"sglang-runner: SGLang server \(pid \d+\) at \d+ s: starting the server: its scheduler and detokenizer",
        r"sglang-runner: SGLang server \(pid \d+\) ready in [\d.]+ s$",
        r"sglang-runner: starting SGLang server for .*, tokenizer_path=/nonexistent/tokenizer$",
        r"sglang-runner: SGLang Engine \(pid \d+\) at \d+ s: building the Engine: its scheduler and detokenizer",
        r"sglang-runner: SGLang Engine \(pid \d+\) ready in [\d.]+ s$",
    ):
        found = re.search(line, output, re.M)
        assert found and found.start() < sections, (line, output)
    # The Engine and the server stop after their last test, not at the session's end: no later test needs them.
    for service in ("server", "Engine"):
        stopping = re.search(
            rf"sglang-runner: stopping SGLang {service} \(pid \d+\): no later test needs it$", output, re.M
        )
        assert stopping and stopping.start() < sections, (service, output)

    # The summary: each config's line of its own, the service ones with their start and stop times.
    builds = [line for line in result.outlines if line.startswith("sglang-runner: SGLang ") and " built " in line]
    assert len(builds) == 2, builds
    assert re.fullmatch(r".* attention, tp 1: 1 build in [\d.]+ s", builds[0]), builds
    assert re.fullmatch(r".* attention, tp 1, max_total_tokens=2048: 1 build in [\d.]+ s", builds[1]), builds
    times = r"2 starts in [\d.]+, [\d.]+ s, 2 stops in (?P<dead>[\d.]+), [\d.]+ s, stopped after its last test, \d+ MiB freed"
    for service in ("Engine", "server"):
        line = re.search(SERVICE_LINE.format(service=service, settings="", times=times), output, re.M)
        assert line, (service, output)
        assert float(line["dead"]) < 2.0, line[0]  # the killed one's stop: no wait on what is gone
    failed = SERVICE_LINE.format(
        service="server", settings=", tokenizer_path=/nonexistent/tokenizer", times=r"1 failed start in [\d.]+ s"
    )
    assert re.search(failed, output, re.M), output
    summary = [
        line for line in result.outlines if re.match(r"sglang-runner: SGLang [\d.]+ (built|Engine|server) ", line)
    ]
    assert len(summary) == 5, summary  # two runner configs, the Engine's, the server's two


@ROBERTA
def test_the_runners_roberta_embedding_is_hfs_normalised_first_token_vector(sglang_forward, hf_model):
    """What the Engine and server return for the kit's masked LM: HF's <s> hidden state, L2-normalised."""
    ours = sglang_forward.embeddings(PROMPTS).float().cpu()
    with torch.no_grad():
        rows = [
            hf_model.roberta(torch.tensor([ids])).last_hidden_state[0, 0] for ids in sglang_forward.token_lists(PROMPTS)
        ]
    torch.testing.assert_close(
        ours, torch.nn.functional.normalize(torch.stack(rows), dim=-1), atol=1e-5 if not ON_GPU else 2e-3, rtol=0
    )


LIFELINE_PARENT = """
import json, sys, time
from pytest_sglang_runner.services.process import HostedProcess
host = HostedProcess("server", "pytest_sglang_runner.services.server_host", [json.dumps(json.loads(sys.argv[1]))], device="cpu")
print(host.pid, host.scratch, host.shared_memory_record, flush=True)
time.sleep(600)
"""


def _shm_path(kind: str, name: str) -> str:
    """Where a recorded name lives under /dev/shm (a semaphore's file has the prefix ``sem.``)."""
    return name if kind == "file" else "/dev/shm/" + ("sem." if kind == "semaphore" else "") + name.lstrip("/")


def test_a_host_goes_with_a_pytest_that_was_killed(embedded_llama):
    """No cleanup of pytest's runs after SIGKILL: the host sees its lifeline pipe close and
    kills its own process group (a server host would otherwise start SGLang and serve forever),
    after removing its temporary directory (SGLang's IPC sockets) and its recorded shared memory.
    The positive control first: while the parent lives, the host lives on past the start of its
    lifeline watch, starts SGLang's scheduler and detokenizer, and they are all still there a few
    seconds later (a lifeline that fired by itself would have taken the group); only then is the
    parent killed."""
    import json
    import subprocess

    from pytest_sglang_runner import ports

    reservation = ports.reserve_port()
    kwargs = {
        "model_path": embedded_llama,
        "device": "cpu",
        "host": "127.0.0.1",
        "port": reservation.port,
        "attention_backend": "torch_native",
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", LIFELINE_PARENT, json.dumps(kwargs)], stdout=subprocess.PIPE, text=True
    )
    host = None
    try:
        host, scratch, record = parent.stdout.readline().split()
        host = int(host)
        deadline = time.monotonic() + 300
        while len(_processes_in({host})) < 3:  # the host, SGLang's scheduler and detokenizer
            assert parent.poll() is None, "the parent ended by itself"
            assert _processes_in({host}), "the host died while its parent was alive"
            assert time.monotonic() < deadline, "the host started no scheduler and detokenizer within 300 s"
            time.sleep(0.5)
        time.sleep(3)
        assert parent.poll() is None and len(_processes_in({host})) >= 3, "the host's group ended by itself"
        sockets = [p for p in Path(scratch).iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]
        assert sockets, f"SGLang's IPC sockets are not in the host's temporary directory {scratch}"
        made = [_shm_path(*line.split(" ", 1)) for line in Path(record).read_text().splitlines()]
        assert made, "the host's group recorded no shared memory"  # SGLang may make a named file later
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 120
        while _processes_in({host}) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [p.info for p in _processes_in({host})] == []
        assert not Path(scratch).exists() and not Path(record).exists()
        assert [name for name in made if os.path.exists(name)] == []
    finally:
        parent.kill()
        if host is not None and _processes_in({host}):  # a failed check leaves nothing behind either
            try:
                os.killpg(host, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reservation.release()


SHARED_MEMORY_HOST = """
import multiprocessing, os, tempfile, time
from multiprocessing import shared_memory

import zmq

from pytest_sglang_runner.sglang_compat.serving import _record_shared_memory

_record_shared_memory()  # what every process of a hosted Engine or server does first
from sglang.srt.managers import load_snapshot

semaphore = multiprocessing.get_context("spawn").Semaphore()  # named, as SGLang's spawned processes make them
segment = shared_memory.SharedMemory(create=True, size=64)
path = load_snapshot.shm_path_for(f"ipc:///tmp/kit-shared-memory-{os.getpid()}")
open(path, "w").close()  # SGLang's load-report file
socket = zmq.Context().socket(zmq.PULL)  # an IPC socket named as SGLang's PortArgs name them
ipc_name = tempfile.NamedTemporaryFile(delete=False).name
socket.bind(f"ipc://{ipc_name}")
print("MADE", "/dev/shm/sem." + semaphore._semlock.name.lstrip("/"), "/dev/shm/" + segment._name.lstrip("/"), path, flush=True)
print("TEMP", ipc_name, tempfile.NamedTemporaryFile(delete=False).name, flush=True)
time.sleep(1000)
"""


def test_the_shared_memory_of_a_killed_host_goes_at_its_stop(tmp_path):
    """A SIGKILLed process cannot unlink its semaphores, shared memory or SGLang's load-report
    file, and its group's resource tracker dies with it: the kit's record of what the group made
    lets its stop unlink them (docs/reliability.md#shared-memory-sglang-leaves-behind). Its IPC
    sockets and temporary files, which SGLang never removes, live in the host's own temporary
    directory and go with it."""
    from pytest_sglang_runner.services.process import HostedProcess

    (tmp_path / "shared_memory_host.py").write_text(SHARED_MEMORY_HOST)
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    host = HostedProcess("shared-memory", "shared_memory_host", device="cpu", env={"PYTHONPATH": python_path})
    try:
        deadline = time.monotonic() + 120
        while "TEMP" not in host.log_path.read_text():
            assert host.alive and time.monotonic() < deadline, host.log_path.read_text()
            time.sleep(0.2)
        made, temporary = (line.split()[1:] for line in host.log_path.read_text().splitlines()[-2:])
        assert len(made) == 3 and all(os.path.exists(name) for name in made), made
        assert stat.S_ISSOCK(os.stat(temporary[0]).st_mode) and os.path.isfile(temporary[1]), temporary
        assert all(Path(name).parent == host.scratch for name in temporary), (temporary, host.scratch)
        os.killpg(host.pid, signal.SIGKILL)
    finally:
        host.stop()
    assert [name for name in made + temporary if os.path.exists(name)] == []
    assert not host.scratch.exists()
