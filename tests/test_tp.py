"""Tensor parallelism as users test it (CPU, gloo, TP=2): a test body on every rank, rank faults
that fail fast and leave nothing behind, and replay-mode faults that do not poison the session.

One inner session (a subprocess) runs every case in order; its conftest records each test's
outcome, message, duration, and the pids of the rank processes alive before it and as its body
starts (which group served it), and the outer tests read that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="TP=2 on CUDA needs 2 GPUs")

HANG_LIMIT_S = 10  # the time limit of the test whose rank 1 never answers (a marker: builds keep the run's limit)

RECORDING_CONFTEST = """
import json, os, time

import psutil
import pytest

RECORD = os.environ["TP_RECORD"]


def rank_processes():  # the pids of this session's TP peers (its multiprocessing-spawned descendants)
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.NoSuchProcess:  # ended meanwhile (a zombie too)
            pass
    return sorted(pids)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.stash.setdefault("started", time.monotonic())
    item.stash.setdefault("peers_before", rank_processes())
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    item.stash["peers_in_call"] = rank_processes()  # after setup: the group that runs this test's body
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        with open(RECORD, "a") as f:
            f.write(json.dumps({
                "name": item.name, "outcome": report.outcome, "message": report.longreprtext,
                "seconds": time.monotonic() - item.stash["started"], "peers_before": item.stash["peers_before"],
                "peers_in_call": item.stash.get("peers_in_call", None),
            }) + "\\n")
    return report


def pytest_sessionfinish(session):
    session.config.stash[__import__("pytest_sglang_runner.plugin").plugin.factory_key].close()
    with open(RECORD, "a") as f:
        f.write(json.dumps({"name": "<end>", "peers_after_close": rank_processes()}) + "\\n")
"""

RANK_HELPERS = """
import os, time

import pytest
import torch
from sglang.srt.distributed import tensor_model_parallel_all_reduce

pytestmark = pytest.mark.sglang(tp=2, every_rank=True)


def all_reduced(rank):
    device = next(rank.runner.model.parameters()).device  # gloo on CPU, NCCL on CUDA
    return tensor_model_parallel_all_reduce(torch.tensor([float(rank.rank + 1)], device=device)).item()


def every_ranks_value(rank, value):  # [rank 0's value, rank 1's, ...]: each fills its slot, the all-reduce sums
    slots = torch.zeros(rank.world_size, device=next(rank.runner.model.parameters()).device)
    slots[rank.rank] = float(value)
    return tensor_model_parallel_all_reduce(slots).tolist()


"""

HEALTHY_TESTS = (
    RANK_HELPERS
    + """

def test_all_reduce_and_forward_on_every_rank(sglang_rank, sglang_forward, runner):
    assert sglang_rank.world_size == 2 and sglang_rank.runner is runner
    assert all_reduced(sglang_rank) == 3.0  # 1 + 2: both ranks took part
    logits = sglang_forward.logits([[0, 5, 6, 7, 2]])[0]
    total = tensor_model_parallel_all_reduce(logits.sum().reshape(1)).item()
    assert abs(total - 2 * logits.sum().item()) <= 1e-3 * abs(total)  # every rank got the same logits


@pytest.mark.parametrize("factor", [1, 3])
def test_parameters_reach_every_rank(sglang_rank, factor):
    assert every_ranks_value(sglang_rank, factor) == [factor] * sglang_rank.world_size  # each rank got rank 0's


def test_a_skip_on_one_rank(sglang_rank):
    if sglang_rank.rank == 1:
        pytest.skip("not on rank 1")


def test_only_rank0_fixtures_are_refused(sglang_rank, tmp_path):
    pass
"""
)

FAULT_TESTS = (
    RANK_HELPERS
    + """

def test_a_rank_that_raises(sglang_rank):
    if sglang_rank.rank == 1:
        raise ValueError("a bug that shows on rank 1 only")
    all_reduced(sglang_rank)  # rank 0 waits for rank 1 here


def test_the_next_test_gets_a_fresh_group(sglang_rank):
    assert all_reduced(sglang_rank) == 3.0


@pytest.mark.sglang(timeout=%d)  # runs on the group the test before built
def test_a_rank_that_never_answers(sglang_rank):
    if sglang_rank.rank == 1:
        time.sleep(10_000)
    all_reduced(sglang_rank)


def test_a_rank_that_exits(sglang_rank):
    if sglang_rank.rank == 1:
        os._exit(3)
    all_reduced(sglang_rank)


def test_a_rank_that_is_killed(sglang_rank):
    if sglang_rank.rank == 1:
        os.kill(os.getpid(), 9)
    all_reduced(sglang_rank)


def test_still_healthy_at_the_end(sglang_rank):
    assert all_reduced(sglang_rank) == 3.0
"""
    % HANG_LIMIT_S
)

REPLAY_TESTS = """
import os
import signal

import pytest


@pytest.mark.sglang(tp=2)
def test_rank0_forward_raises_before_any_collective(sglang_forward, runner, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("rank 0's model fails before its first collective")

    monkeypatch.setattr(runner.model, "forward", broken)
    sglang_forward([[0, 5, 6, 2]])


@pytest.mark.sglang(tp=2)
def test_replay_works_again(sglang_forward):
    assert sglang_forward([[0, 5, 6, 2]]).logits[0].isfinite().all()


@pytest.mark.sglang(tp=2)
def test_a_peer_killed_between_calls(sglang_live):
    os.kill(sglang_live.peers.processes[0].pid, signal.SIGKILL)
    sglang_live.peers.processes[0].join(10)
    sglang_live.forward([[0, 5, 6, 2]])


@pytest.mark.sglang(tp=2)
def test_replay_works_after_the_kill(sglang_forward):
    assert sglang_forward([[0, 5, 6, 2]]).logits[0].isfinite().all()
"""


@pytest.fixture
def inner_run(pytester, runpytest_forked, tmp_path, monkeypatch, request):
    """The inner session runs on the outer one's device (CPU unless --sglang-device cuda) and
    ServerArgs (so a GPU run can turn CUDA graphs on)."""
    records = os.environ.get("TP_RECORD_DIR")  # a GPU run keeps them, also when the run is cut off
    record = Path(records) / f"{request.node.name}.jsonl" if records else tmp_path / "record.jsonl"
    record.unlink(missing_ok=True)
    monkeypatch.setenv("TP_RECORD", str(record))
    pytester.makeconftest(RECORDING_CONFTEST)
    device = request.config.getoption("sglang_device") or "cpu"
    server_args = [f"--sglang-arg={arg}" for arg in request.config.getoption("sglang_arg") or ()]

    def run(**files):
        pytester.makepyfile(**files)
        result = runpytest_forked(
            "-p", "no:cacheprovider", "-W", "ignore", f"--sglang-device={device}", *server_args, timeout=900
        )
        entries = [json.loads(line) for line in record.read_text().splitlines()]
        return result, {entry["name"]: entry for entry in entries}  # in the order they ran

    return run


def test_every_rank_mode_runs_the_body_on_each_rank(inner_run):
    result, tests = inner_run(test_every_rank=HEALTHY_TESTS)
    for name in (
        "test_all_reduce_and_forward_on_every_rank",
        "test_parameters_reach_every_rank[1]",
        "test_parameters_reach_every_rank[3]",
    ):
        assert tests[name]["outcome"] == "passed", tests[name]
    skipped = tests["test_a_skip_on_one_rank"]
    assert skipped["outcome"] == "skipped" and "rank 1: not on rank 1" in skipped["message"], skipped
    refused = tests["test_only_rank0_fixtures_are_refused"]
    assert refused["outcome"] == "failed" and "fixture 'tmp_path' exists on rank 0 only" in refused["message"], refused
    # One group all along: a single peer process, the same one before and during every test.
    ran = [entry for entry in tests.values() if entry.get("peers_in_call") is not None]
    assert len(ran) == 5 and len(ran[0]["peers_in_call"]) == 1, ran
    peer = ran[0]["peers_in_call"]
    assert all(entry["peers_in_call"] == peer for entry in ran), ran
    assert ran[0]["peers_before"] in ([], peer) and all(entry["peers_before"] == peer for entry in ran[1:]), ran
    assert tests["<end>"]["peers_after_close"] == []


def test_rank_faults_fail_fast_name_the_rank_and_leave_a_fresh_group(inner_run, record_property):
    result, tests = inner_run(test_rank_faults=FAULT_TESTS)
    for name in ("test_the_next_test_gets_a_fresh_group", "test_still_healthy_at_the_end"):
        assert tests[name]["outcome"] == "passed", tests[name]
    faults = {
        "test_a_rank_that_raises": ["rank 1 failed:", "ValueError: a bug that shows on rank 1 only"],
        "test_a_rank_that_exits": ["rank 1 exited with code 3"],
        "test_a_rank_that_is_killed": ["rank 1 was killed by signal 9 (SIGKILL)"],
        "test_a_rank_that_never_answers": [f"rank 1 did not finish within {HANG_LIMIT_S} s"],
    }
    for name, words in faults.items():
        entry = tests[name]
        assert entry["outcome"] == "failed" and all(w in entry["message"] for w in words), entry
        assert entry["seconds"] < HANG_LIMIT_S + 60, entry  # the build of a fresh group included
        record_property(f"{name}_s", round(entry["seconds"], 1))
    # After each fault the next test builds a fresh group: a new peer process, and the old one is gone.
    assert all(len(entry["peers_before"]) <= 1 for entry in tests.values() if "peers_before" in entry), tests
    ran = [entry for entry in tests.values() if entry["name"] != "<end>"]
    next_test = {entry["name"]: after for entry, after in zip(ran, ran[1:])}
    for name in faults:
        fault, after = tests[name], next_test[name]
        assert len(fault["peers_in_call"]) == 1 and len(after["peers_in_call"]) == 1, (fault, after)
        assert after["peers_in_call"] != fault["peers_in_call"], (fault, after)
        assert not set(after["peers_before"]) & set(fault["peers_in_call"]), (fault, after)
    # A healthy test leaves its group for the next one.
    fresh, hang = tests["test_the_next_test_gets_a_fresh_group"], tests["test_a_rank_that_never_answers"]
    assert hang["peers_in_call"] == fresh["peers_in_call"], (fresh, hang)
    assert tests["<end>"]["peers_after_close"] == []


def test_a_replayed_forward_that_fails_on_rank0_or_meets_a_killed_peer_does_not_poison_the_session(inner_run):
    result, tests = inner_run(test_replay=REPLAY_TESTS)
    first = tests["test_rank0_forward_raises_before_any_collective"]
    assert first["outcome"] == "failed" and "rank 0's model fails before its first collective" in first["message"], (
        first
    )
    assert tests["test_replay_works_again"]["outcome"] == "passed", tests["test_replay_works_again"]
    killed = tests["test_a_peer_killed_between_calls"]  # a RankFailure naming the rank, not a BrokenPipeError
    assert killed["outcome"] == "failed", killed
    assert "RankFailure: TP rank 1 was killed by signal 9 (SIGKILL) before rank 0's prepare()" in killed["message"], (
        killed
    )
    assert tests["test_replay_works_after_the_kill"]["outcome"] == "passed", tests["test_replay_works_after_the_kill"]
    assert tests["<end>"]["peers_after_close"] == []
