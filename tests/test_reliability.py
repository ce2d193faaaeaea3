"""Reliability with a figure for each: bad inputs, injected faults, build/teardown cycles,
concurrent sessions, SIGINT at each phase, lock files left.

Each test records its figures with ``record_property``; ``bench/reliability_report.py`` turns
the junit XML of a run into the table in docs/reliability.md. Inner pytest sessions run in
subprocesses with a private port-lock directory, so what they leave behind can be counted.
"""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from model_damage import shorten_tensor

ON_GPU = torch.cuda.is_available()
DTYPE_ARGS = ["--sglang-dtype=bfloat16"] if ON_GPU else []  # the CUDA RMSNorm has no float32 kernel
INNER_ARGS = ["-p", "no:cacheprovider", "-W", "ignore", *DTYPE_ARGS]


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    """A port-lock directory of the inner sessions' own, to count what they leave in it."""
    directory = tmp_path / "port-locks"
    monkeypatch.setenv("PYTEST_SGLANG_PORT_LOCK_DIR", str(directory))
    return directory


def lock_files_left(directory: Path) -> int:
    return len(list(directory.glob("*.lock"))) if directory.exists() else 0


# ---------------------------------------------------------------------------------------------
# Bad inputs only the build can judge, and faults at each build step and inside tests
# ---------------------------------------------------------------------------------------------

BROKEN_MODELS = '''
"""A user's model classes with bugs, registered the way users register theirs (SGLANG_EXTERNAL_MODEL_PACKAGE)."""
from sglang.srt.models.llama import LlamaForCausalLM


class BrokenInitForCausalLM(LlamaForCausalLM):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("a bug in the user's __init__")


class BrokenForwardForCausalLM(LlamaForCausalLM):
    def forward(self, *args, **kwargs):
        raise RuntimeError("a bug in the user's forward")


EntryClass = [BrokenInitForCausalLM, BrokenForwardForCausalLM]
'''

HEALTH_CONFTEST = '''
import json, os, socket

import psutil
import pytest
import torch

from pytest_sglang_runner import ports

MODELS = json.loads(os.environ["FAULT_MODELS"])
RECORD = os.environ["FAULT_RECORD"]
PROMPTS = [[1, 5, 6, 7], [1, 8, 9]]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault("reports", {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def reference(runner_factory):
    """Logits of a healthy runner."""
    return runner_factory.get().forward(PROMPTS).next_token_logits.float().cpu()


def _gpu_bytes():
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def _lock_fds_held():
    links = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
    return [link for link in links if link.startswith(str(ports.LOCK_DIR.resolve()))]


@pytest.fixture(autouse=True)
def health(request, runner_factory, reference):
    """After the test: what a failed build left, then whether the next build runs and answers right."""
    stash = request.node.stash
    runner_factory.close()  # no runner before the test: what is in use now (SGLang's one-time buffers) is the baseline
    baseline = _gpu_bytes()
    yield
    state = {}
    if runner_factory.live is None:
        state["process_group"] = torch.distributed.is_initialized()
        state["lock_fds"] = len(_lock_fds_held())
        children = [" ".join(child.cmdline()) for child in psutil.Process().children(recursive=True)]
        # multiprocessing's resource tracker: started by the first spawn, one per session by design
        state["child_processes"] = [command for command in children if "multiprocessing.resource_tracker" not in command]
        if torch.cuda.is_available():
            state["gpu_bytes_over_baseline"] = _gpu_bytes() - baseline
    live = runner_factory.get()
    live.forward.release()  # as the next test's fixture does
    state["next_build_matches"] = bool(torch.equal(live.forward(PROMPTS).next_token_logits.float().cpu(), reference))
    reports = stash.get("reports", {})
    failed = next((r for r in reports.values() if r.failed), None)
    entry = dict(
        name=request.node.name,
        outcome="passed" if failed is None else f"{failed.when} failed",
        message=failed.longreprtext if failed is not None else "",
        health=state,
    )
    with open(RECORD, "a") as file:
        file.write(json.dumps(entry) + "\\n")


@pytest.fixture
def port_taken_after_reservation(monkeypatch):
    """A process outside the kit binds the dist port between the kit's check and SGLang's bind."""
    reserve, taken = ports.reserve_ports, []

    def reserve_then_lose_the_first(count):
        reservations = reserve(count)
        if not taken:
            squatter = socket.socket()
            squatter.bind(("127.0.0.1", reservations[0].port))
            squatter.listen()
            taken.append(squatter)
        return reservations

    monkeypatch.setattr(ports, "reserve_ports", reserve_then_lose_the_first)
    yield taken
    for squatter in taken:
        squatter.close()
'''

# (test name, kind, marker arguments, words the error must contain)
BUILD_CASES = [
    (
        "unsupported_architecture",
        "input",
        "model=MODELS['unsupported_architecture']",
        ["--sglang-model", "FooForCausalLM", "registers no model class"],
    ),
    (
        "unknown_model_type",
        "input",
        "model=MODELS['unknown_model_type']",
        ["--sglang-model", "model_type 'foo'", "correct model_type"],
    ),
    (
        "truncated_safetensors",
        "input",
        "model=MODELS['truncated_safetensors']",
        ["--sglang-model", "model.safetensors", "cut short"],
    ),
    (
        "config_not_json",
        "input",
        "model=MODELS['config_not_json']",
        ["--sglang-model", "config.json is not valid JSON"],
    ),
    ("kv_pool_of_one_token", "input", "max_total_tokens=1", ["--sglang-max-total-tokens 1", "use at least"]),
    (
        "uncached_hub_id",
        "input",
        "model='no-org/no-such-model'",
        ["--sglang-model 'no-org/no-such-model'", "not in the local Hugging Face cache"],
    ),
    ("unknown_server_args_field", "input", "no_such_field=1", ["--sglang-arg no_such_field", "no ServerArgs field"]),
    (
        "mistyped_server_args_value",
        "input",
        "chunked_prefill_size='many'",
        ["chunked_prefill_size=many", "expected a int value"],
    ),
    (
        "unknown_attention_backend",
        "input",
        "attention_backend='nonsense'",
        ["--sglang-attention-backend 'nonsense'", "torch_native"],
    ),
    ("bad_marker_value", "input", "tp='two'", ["--sglang-tp 'two'", "@pytest.mark.sglang(tp='two')"]),
    ("positional_marker", "input", "'x'", ["keyword arguments only", "@pytest.mark.sglang('x')"]),
    (
        "weights_of_the_wrong_shape",
        "build fault",
        "model=MODELS['weights_of_the_wrong_shape']",
        ["could not build LlamaForCausalLM", "Error"],
    ),
    (
        "model_class_raising_in_init",
        "build fault",
        "model=MODELS['model_class_raising_in_init']",
        ["could not build BrokenInitForCausalLM", "a bug in the user's __init__", "broken_models"],
    ),
    (
        "model_class_raising_in_forward",
        "build fault",
        "model=MODELS['model_class_raising_in_forward']",
        ["could not build BrokenForwardForCausalLM", "a bug in the user's forward", "broken_models"],
    ),
]
if not ON_GPU or torch.cuda.device_count() >= 2:
    BUILD_CASES.append(
        (
            "tp2_weights_of_the_wrong_shape",
            "build fault",
            "model=MODELS['weights_of_the_wrong_shape'], tp=2",
            ["could not build LlamaForCausalLM"],
        )
    )

IN_TEST_FAULTS = """
@pytest.mark.sglang()
def test_port_taken_after_reservation(port_taken_after_reservation, runner_factory):
    live = runner_factory.get(max_total_tokens=4000)  # a fresh build
    assert port_taken_after_reservation and live.ports[0] != port_taken_after_reservation[0].getsockname()[1]


def test_raises_with_a_prepared_batch_holding_kv(sglang_forward):
    sglang_forward.prepare([[1, 2, 3, 4]] * 8)
    raise RuntimeError("a test fails while its batch holds KV slots")


def test_raises_mid_generation_loop(sglang_forward):
    for step in range(3):
        sglang_forward.generate([[1, 5, 6]], max_new_tokens=2)
        if step == 1:
            raise RuntimeError("a test fails between generations")


def test_closes_the_runner_itself(runner_factory, runner):
    runner_factory.close()
    raise RuntimeError("a test tears the runner down and fails")


@pytest.mark.sglang(max_total_tokens=2048)
def test_leaves_the_kv_pool_full(sglang_forward, runner):
    from pytest_sglang_runner.sglang_compat import batches, bootstrap

    limits = batches.runner_limits(runner)
    sequences = min(limits.request_slots, 8)
    length = min(limits.kv_slots // sequences, limits.max_sequence)
    sglang_forward.prepare([[1] * length] * sequences)
    assert batches.free_kv_slots(runner) < length
    assert False, "a test fails with the KV pool full"
"""
IN_TEST_NAMES = [
    "test_port_taken_after_reservation",
    "test_raises_with_a_prepared_batch_holding_kv",
    "test_raises_mid_generation_loop",
    "test_closes_the_runner_itself",
    "test_leaves_the_kv_pool_full",
]


def _fault_models(root: Path, source: str) -> dict:
    models = {}

    def variant(name, config_change=None):
        directory = root / name
        shutil.copytree(source, directory)
        if config_change is not None:
            config = json.loads((directory / "config.json").read_text())
            config.update(config_change)
            (directory / "config.json").write_text(json.dumps(config))
        models[name] = str(directory)
        return directory

    variant("unsupported_architecture", {"architectures": ["FooForCausalLM"]})
    variant("unknown_model_type", {"architectures": ["FooForCausalLM"], "model_type": "foo"})
    weights = variant("truncated_safetensors") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (variant("config_not_json") / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    shorten_tensor(variant("weights_of_the_wrong_shape"), "model.layers.0.self_attn.o_proj.weight")
    variant("model_class_raising_in_init", {"architectures": ["BrokenInitForCausalLM"]})
    variant("model_class_raising_in_forward", {"architectures": ["BrokenForwardForCausalLM"]})
    return models


def _message_lines(message: str) -> list[str]:
    return [
        line for line in message.strip().splitlines() if line and not line.startswith("(the cause's full traceback")
    ]


def test_build_errors_are_short_and_every_fault_leaves_the_session_healthy(
    pytester, tmp_path, lock_dir, monkeypatch, record_property, embedded_llama
):
    """Each case fails its own test in a few lines naming the setting, the value and the fix; after
    each, no process group, port lock, child process or GPU memory is left, and the next build
    gives the same logits as the first."""
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAULT_MODELS", json.dumps(_fault_models(tmp_path, embedded_llama)))
    monkeypatch.setenv("FAULT_RECORD", str(record))
    monkeypatch.setenv("SGLANG_EXTERNAL_MODEL_PACKAGE", "broken_models")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # no saved ServerArgs schema: the build judges
    pytester.mkpydir("broken_models")
    (pytester.path / "broken_models" / "broken.py").write_text(BROKEN_MODELS)
    pytester.makeconftest(HEALTH_CONFTEST)
    cases = "\n".join(
        f"@pytest.mark.sglang({marker})\ndef test_{name}(runner):\n    pass\n" for name, _, marker, _ in BUILD_CASES
    )
    pytester.makepyfile(
        test_faults=f"import pytest\n\nMODELS = __import__('json').loads(__import__('os').environ['FAULT_MODELS'])\n\n{cases}\n{IN_TEST_FAULTS}"
    )
    result = pytester.runpytest_subprocess(*INNER_ARGS, f"--sglang-model={embedded_llama}", timeout=1200)
    entries = {entry["name"]: entry for entry in map(json.loads, record.read_text().splitlines())}

    unclear, unhealthy = [], []
    for name, _kind, _, words in BUILD_CASES:
        entry = entries.get(f"test_{name}", {"outcome": "missing", "message": "", "health": {}})
        lines = _message_lines(entry["message"])
        if entry["outcome"] != "setup failed" or len(lines) > 2 or not all(word in entry["message"] for word in words):
            unclear.append((name, entry["outcome"], entry["message"]))
        if any(
            entry["health"].get(key)
            for key in ("process_group", "lock_fds", "child_processes", "gpu_bytes_over_baseline")
        ) or not entry["health"].get("next_build_matches"):
            unhealthy.append((name, entry["health"]))
    for name in IN_TEST_NAMES:
        entry = entries.get(name, {"outcome": "missing", "health": {}})
        expected = "passed" if name == "test_port_taken_after_reservation" else "call failed"
        if entry["outcome"] != expected or not entry["health"].get("next_build_matches"):
            unhealthy.append((name, entry))

    inputs = [case for case in BUILD_CASES if case[1] == "input"]
    faults = [case for case in BUILD_CASES if case[1] != "input"] + IN_TEST_NAMES
    record_property("build_time_bad_inputs_tried", len(inputs))
    record_property(
        "build_time_bad_inputs_clear", len(inputs) - sum(1 for case in unclear if case[0] in {c[0] for c in inputs})
    )
    record_property(
        "build_faults_clear",
        len(BUILD_CASES) - len(inputs) - sum(1 for case in unclear if case[0] not in {c[0] for c in inputs}),
    )
    record_property("faults_injected", len(faults) + len(inputs))
    record_property("faults_left_the_session_healthy", len(faults) + len(inputs) - len(unhealthy))
    record_property("lock_files_left", lock_files_left(lock_dir))
    assert unclear == [] and unhealthy == [], (unclear, unhealthy)
    assert lock_files_left(lock_dir) == 0
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]


# ---------------------------------------------------------------------------------------------
# Build/teardown cycles
# ---------------------------------------------------------------------------------------------

CYCLES = 100
WARM_CYCLES = 10  # allocator pools and caches fill during the first builds


def _resources() -> dict:
    import gc
    import threading

    gc.collect()
    process = psutil.Process()
    return dict(
        rss=process.memory_info().rss,
        fds=len(os.listdir("/proc/self/fd")),
        threads=threading.active_count(),
        sockets=len(process.net_connections(kind="inet")),
    )


def test_a_hundred_build_teardown_cycles_grow_nothing(runner_factory, record_property):
    """RSS, fds, threads and sockets after cycle 10 and after cycle 100: growth per cycle."""
    samples = []
    for cycle in range(CYCLES):
        live = runner_factory.get(max_total_tokens=256 + cycle % 2)  # another spec: a full rebuild each time
        live.forward([[0, 5, 6, 2]])
        del live
        runner_factory.close()
        if cycle + 1 in (WARM_CYCLES, CYCLES):
            samples.append(_resources())
    first, last = samples
    growth = {key: (last[key] - first[key]) / (CYCLES - WARM_CYCLES) for key in first}
    record_property("cycles", CYCLES)
    for key, value in growth.items():
        record_property(f"{key}_growth_per_cycle", round(value / 2**20, 4) if key == "rss" else round(value, 3))
    assert growth["rss"] < 0.25 * 2**20, growth  # a leaked KV pool or weight copy would be MBs per cycle
    assert (
        last["fds"] == first["fds"] and last["threads"] == first["threads"] and last["sockets"] == first["sockets"]
    ), (first, last)
    if ON_GPU:
        before = torch.cuda.memory_allocated()
        runner_factory.get(max_total_tokens=256)
        runner_factory.close()
        assert torch.cuda.memory_allocated() == before


# ---------------------------------------------------------------------------------------------
# Concurrent sessions and xdist workers
# ---------------------------------------------------------------------------------------------

RUNNER_TEST = """
import json, os

def test_runner(sglang_live, worker_id):
    assert sglang_live.forward([[1, 5, 6, 7]]).next_token_logits.isfinite().all()
    with open(os.path.join(os.environ["OUT_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump(sglang_live.ports, f)
"""

SESSIONS = 8


def _session_args(directory: Path, model: str, workers: int) -> list[str]:
    xdist = ["-n", str(workers), "--dist", "loadfile"] if workers else []
    device = [] if ON_GPU else ["--sglang-device=cpu"]
    return [*INNER_ARGS, f"--sglang-model={model}", *xdist, *device, str(directory)]


def test_eight_sessions_at_once_pass_with_disjoint_ports(
    tmp_path, lock_dir, monkeypatch, record_property, embedded_llama, start_pytest
):
    """On CPU two of the sessions run two xdist workers each, so ten processes build runners at once."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT_DIR", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # ten processes on a small machine: no spinning thread pools
    processes, session_workers = [], []
    for index in range(SESSIONS):
        directory = tmp_path / f"session{index}"
        directory.mkdir()
        workers = 2 if index % 4 == 1 and not ON_GPU else 0  # xdist workers each take a GPU
        session_workers.append(workers)
        for name in ("test_a.py", "test_b.py")[: 2 if workers else 1]:
            (directory / name).write_text(RUNNER_TEST)
        processes.append(
            start_pytest(
                _session_args(directory, embedded_llama, workers),
                cwd=directory,
                env=dict(os.environ),
                stdout=directory / "output.txt",
            )
        )
    for process in processes:
        process.wait(timeout=900)
    outputs = [process.output() for process in processes]
    passed = sum(process.returncode == 0 for process in processes)
    ports = [port for path in out.glob("*.json") for port in json.loads(path.read_text())]
    record_property("concurrent_sessions", SESSIONS)
    record_property("concurrent_runner_processes", len(list(out.glob("*.json"))))
    record_property("concurrent_sessions_passed", passed)
    record_property("lock_files_left", lock_files_left(lock_dir))
    assert passed == SESSIONS, [output[-2000:] for process, output in zip(processes, outputs) if process.returncode]
    assert len(ports) == len(set(ports)) == 2 * len(list(out.glob("*.json")))
    assert len(list(out.glob("*.json"))) == sum(max(1, workers) for workers in session_workers)
    assert lock_files_left(lock_dir) == 0


# ---------------------------------------------------------------------------------------------
# SIGINT at each phase
# ---------------------------------------------------------------------------------------------

PHASE_CONFTEST = """
import os, time

PHASE = os.environ["SIGINT_PHASE"]


def reached(phase):
    if phase == PHASE:
        open(os.environ["PHASE_FILE"], "w").write(str(os.getpid()))
        time.sleep(120)  # the outer test interrupts us here


def pytest_configure(config):
    from pytest_sglang_runner.sglang_compat import batches, bootstrap

    build, destroy = bootstrap.build_model_runner, bootstrap.destroy_distributed_state

    def build_then_wait(*args, **kwargs):
        runner = build(*args, **kwargs)  # weights loaded, groups up, TP peers built or building
        reached("build")
        return runner

    def wait_then_destroy():
        reached("teardown")
        destroy()

    bootstrap.build_model_runner, bootstrap.destroy_distributed_state = build_then_wait, wait_then_destroy


def pytest_collection_modifyitems(items):
    reached("collection")
"""

PHASE_TESTS = """
from conftest import reached


def test_runner(sglang_live):
    sglang_live.forward([[1, 5, 6]])
    reached("test")
"""

TP2 = pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="TP=2 on CUDA needs 2 GPUs")
PHASES = [
    "collection",
    "build",
    "test",
    "teardown",
    pytest.param("tp2 build", marks=TP2),
    pytest.param("tp2 test", marks=TP2),
]


@pytest.mark.parametrize("phase", PHASES)
def test_sigint_at_each_phase_exits_2_and_leaves_nothing(
    pytester, tmp_path, lock_dir, monkeypatch, phase, record_property, embedded_llama, start_pytest
):
    """Ctrl-C at that point: exit code 2, no process left (TP peers included), no lock file, no port."""
    phase_file = tmp_path / "phase"
    monkeypatch.setenv("SIGINT_PHASE", phase.replace("tp2 ", ""))
    monkeypatch.setenv("PHASE_FILE", str(phase_file))
    pytester.makeconftest(PHASE_CONFTEST)
    pytester.makepyfile(test_phase=PHASE_TESTS)
    tp = ["--sglang-tp=2"] if phase.startswith("tp2") else []
    process = start_pytest(
        [*INNER_ARGS, f"--sglang-model={embedded_llama}", *tp],
        cwd=pytester.path,
        env=dict(os.environ),
        stdout=tmp_path / "output.txt",
        new_session=True,
    )
    deadline = time.monotonic() + 300
    while not phase_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    family = (
        [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        if process.poll() is None
        else []
    )
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does: the whole foreground group
    process.wait(timeout=120)
    output = process.output()
    time.sleep(1)  # killed peers are reaped by their parent's exit
    survivors = [
        pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    record_property("sigint_phase", phase)
    record_property("sigint_exit_code", process.returncode)
    record_property("sigint_processes_left", len(survivors))
    record_property("sigint_lock_files_left", lock_files_left(lock_dir))
    assert phase_file.exists(), output[-3000:]
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output[-6000:]
    assert survivors == []
    assert lock_files_left(lock_dir) == 0
    if phase != "collection":
        assert len(family) >= (2 if phase.startswith("tp2") else 1)
