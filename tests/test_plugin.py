"""The plugin from a user's side: real inner pytest runs in subprocesses (pytester)."""

import json
import subprocess
import sys

import pytest
import torch

RECORD_STATE_AT_EXIT = """
import atexit, json, os

def _record():
    import torch.distributed
    with open(os.environ["STATE_FILE"], "w") as f:
        json.dump({"distributed": torch.distributed.is_initialized()}, f)

atexit.register(_record)
"""

RECORD_RUNNER = """
import json, os

def test_runner(runner, sglang_live, worker_id):
    assert runner.model is not None
    path = os.path.join(os.environ["OUT_DIR"], f"{worker_id}-{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"pid": os.getpid(), "ports": sglang_live.ports, "runner": id(runner)}, f)
"""


def records(directory):
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def test_a_user_test_needs_nothing_but_the_runner_fixture(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_FILE", str(tmp_path / "state.json"))
    pytester.makeconftest(RECORD_STATE_AT_EXIT)
    pytester.makepyfile(
        test_user="""
        def test_x(runner):
            assert runner.model is not None

        def test_fails_but_teardown_still_happens(runner):
            assert False, "on purpose"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines([r"sglang-runner: SGLang \d+\.\d+\.\d+ built .*embedded-roberta on (cpu|cuda:0), \w+, \w+ attention, tp 1: 1 build in [\d.]+ s"])
    assert json.loads((tmp_path / "state.json").read_text()) == {"distributed": False}


@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two workers need two GPUs, or a CPU runner, which SGLang's CUDA build may not run")
def test_each_xdist_worker_builds_its_own_runner(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("OUT_DIR", str(tmp_path))
    pytester.makepyfile(test_a=RECORD_RUNNER, test_b=RECORD_RUNNER)
    device = [] if torch.cuda.is_available() else ["--sglang-device=cpu"]  # one GPU per worker
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore", "-n", "2", "--dist", "loadfile", *device)
    result.assert_outcomes(passed=2)
    first, second = records(tmp_path)
    assert first["pid"] != second["pid"]
    assert not set(first["ports"]) & set(second["ports"])
    result.stdout.re_match_lines([r"sglang-runner: SGLang .* tp 1: 2 builds in [\d.]+, [\d.]+ s"])


def test_two_pytest_sessions_at_once_both_pass_with_disjoint_ports(pytester, tmp_path):
    pytester.makepyfile(test_record=RECORD_RUNNER)
    outs = [tmp_path / "one", tmp_path / "two"]
    sessions = []
    for out in outs:
        out.mkdir()
        env = dict(__import__("os").environ, OUT_DIR=str(out))
        sessions.append(
            subprocess.Popen(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "ignore", "-q", "--sglang-mem-fraction=0.3", str(pytester.path)],
                cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    outputs = [session.communicate(timeout=600)[0] for session in sessions]
    assert [session.returncode for session in sessions] == [0, 0], outputs
    (one,), (two,) = records(outs[0]), records(outs[1])
    assert not set(one["ports"]) & set(two["ports"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU case")
def test_gpu_marker_skips_with_a_reason_without_gpus(pytester):
    pytester.makepyfile(
        test_gpu="""
        import pytest

        @pytest.mark.gpu(2)
        def test_needs_two():
            raise AssertionError("must not run")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_gpu.py:3: needs 2 CUDA GPU(s), found 0"])  # at the test, not in the plugin


ORDERING = """
import pytest

def test_plain_first():
    pass

@pytest.mark.sglang(max_total_tokens=1024)
def test_runner_b(runner):
    pass

def test_plain_middle():
    pass

def test_runner_a(sglang_forward):
    pass

def test_plain_last():
    pass
"""


def _collected(result) -> list[str]:
    return [line.strip().split("::")[-1] for line in result.outlines if "::" in line]


def test_only_runner_tests_are_regrouped_and_marked(pytester):
    pytester.makepyfile(test_order=ORDERING)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    # Default config first, in the slots runner tests held; plain tests stay where they were.
    assert _collected(result) == ["test_plain_first", "test_runner_a", "test_plain_middle", "test_runner_b", "test_plain_last"]
    selected = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q", "-m", "not sglang_runner")
    assert _collected(selected) == ["test_plain_first", "test_plain_middle", "test_plain_last"]


@pytest.mark.parametrize("how", [["--sglang-skip"], "ini"])
def test_sglang_skip_skips_the_runner_tests_only(pytester, how):
    pytester.makepyfile(test_order=ORDERING)
    if how == "ini":
        pytester.makeini("[pytest]\nsglang_skip = true\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", *(how if how != "ini" else []))
    result.assert_outcomes(passed=3, skipped=2)
    result.stdout.fnmatch_lines(["*--sglang-skip: tests that use an SGLang runner are skipped*"])


def test_runs_without_xdist(pytester):
    pytester.makepyfile(test_x="def test_x(runner):\n    assert runner.model is not None\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore")
    result.assert_outcomes(passed=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU case")
def test_cuda_device_without_a_gpu_is_a_usage_error(pytester, record_property):
    record_property("bad_input", "--sglang-device cuda without a GPU")
    pytester.makepyfile(test_x="def test_x(runner):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sglang-device=cuda", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sglang-device cuda: no CUDA device is visible; use --sglang-device cpu*"])


@pytest.mark.gpu(1)
def test_more_workers_than_gpus_is_a_usage_error(pytester, record_property):
    record_property("bad_input", "more xdist workers than GPUs")
    workers = torch.cuda.device_count() + 1
    pytester.makepyfile(test_x="def test_x(runner):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", str(workers))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*-n {workers} with --sglang-tp 1 needs {workers} GPUs*"])


def test_an_hf_masked_lm_checkpoint_loads_through_the_model_option(pytester, tmp_path):
    """A RobertaForMaskedLM saved by transformers, given as --sglang-model PATH, gives HF's <mask> logits."""
    from pytest_sglang_runner.models.embedded import write_embedded_model

    checkpoint = write_embedded_model(tmp_path / "saved-by-transformers")
    pytester.makepyfile(
        test_mask="""
        import torch

        def test_mask_logits(sglang_forward, hf_model, sglang_model_path):
            assert sglang_model_path == %r
            tokenizer = sglang_forward.tokenizer
            ids = tokenizer("the acting was superb . It was <mask> .")["input_ids"]
            mask = ids.index(tokenizer.mask_token_id)
            ours = sglang_forward([ids]).logits[0][mask].float().cpu()
            with torch.no_grad():
                theirs = hf_model(torch.tensor([ids])).logits[0, mask]
            tolerance = 1e-5 if ours.device.type == "cpu" and not torch.cuda.is_available() else 5e-3
            assert (ours - theirs).abs().max().item() <= tolerance
        """ % str(checkpoint)
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore", f"--sglang-model={checkpoint}")
    result.assert_outcomes(passed=1)


def test_the_embedded_model_is_written_once_per_machine_and_cleared_on_request(pytester, tmp_path, monkeypatch, record_property):
    """The second run reads the model the first one wrote (a persistent, version-keyed cache);
    --sglang-clear-cache writes it again. The run times are quoted in docs/index.md."""
    import time

    from pytest_sglang_runner.models.embedded import bytes_key

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    pytester.makepyfile(test_x="def test_x(runner):\n    assert runner.model is not None\n")
    weights = tmp_path / "xdg" / "pytest-sglang-runner" / "models" / bytes_key() / "embedded-llama" / "model.safetensors"
    stamps, seconds = [], []
    for args in ([], [], ["--sglang-clear-cache"]):
        started = time.perf_counter()
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore", "--sglang-model=embedded-llama", *args)
        seconds.append(time.perf_counter() - started)
        result.assert_outcomes(passed=1)
        stamps.append(weights.stat().st_mtime_ns)
    assert stamps[0] == stamps[1] != stamps[2]
    for name, value in zip(("first_run_s", "second_run_s", "cleared_run_s"), seconds):
        record_property(name, round(value, 1))
