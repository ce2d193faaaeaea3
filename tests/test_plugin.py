"""The plugin from a user's side: real inner pytest runs in subprocesses (pytester)."""

import json
import os

import pytest
import torch

# Where the inner runs build: CPU on the CI box; on a GPU box the GPU, in bfloat16 (SGLang's CUDA
# build has no CPU kernel for some ops, and sgl_kernel's RMSNorm no float32 one).
INNER_DEVICE = (
    ["--sglang-device", "cuda", "--sglang-dtype", "bfloat16"]
    if torch.cuda.is_available()
    else ["--sglang-device", "cpu"]
)

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


def test_a_user_test_needs_nothing_but_the_runner_fixture(pytester, runpytest_forked, tmp_path, monkeypatch):
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
    result = runpytest_forked("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines(
        [
            r"sglang-runner: SGLang \d+\.\d+\.\d+ built .*embedded-roberta on (cpu|cuda:0), \w+, \w+ attention, tp 1: 1 build in [\d.]+ s"
        ]
    )
    assert json.loads((tmp_path / "state.json").read_text()) == {"distributed": False}


@pytest.mark.skipif(
    torch.cuda.device_count() == 1,
    reason="two workers need two GPUs, or a CPU runner, which SGLang's CUDA build may not run",
)
def test_each_xdist_worker_builds_its_own_runner(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("OUT_DIR", str(tmp_path))
    pytester.makepyfile(test_a=RECORD_RUNNER, test_b=RECORD_RUNNER)
    device = [] if torch.cuda.is_available() else ["--sglang-device=cpu"]  # one GPU per worker
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "ignore", "-n", "2", "--dist", "loadfile", *device
    )
    result.assert_outcomes(passed=2)
    first, second = records(tmp_path)
    assert first["pid"] != second["pid"]
    assert not set(first["ports"]) & set(second["ports"])
    result.stdout.re_match_lines([r"sglang-runner: SGLang .* tp 1: 2 builds in [\d.]+, [\d.]+ s"])


def test_two_pytest_sessions_at_once_both_pass_with_disjoint_ports(pytester, tmp_path, start_pytest):
    pytester.makepyfile(test_record=RECORD_RUNNER)
    outs = [tmp_path / "one", tmp_path / "two"]
    sessions = []
    for out in outs:
        out.mkdir()
        sessions.append(
            start_pytest(
                ["-p", "no:cacheprovider", "-W", "ignore", "-q", "--sglang-mem-fraction=0.3", str(pytester.path)],
                cwd=pytester.path,
                env=dict(os.environ, OUT_DIR=str(out)),
                stdout=out / "output.txt",
            )
        )
    codes = [session.wait(600) for session in sessions]
    assert codes == [0, 0], [session.output() for session in sessions]
    (one,), (two,) = records(outs[0]), records(outs[1])
    assert not set(one["ports"]) & set(two["ports"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU case")
def test_gpu_marker_skips_with_a_reason_without_gpus(pytester):
    pytester.makepyfile(
        test_gpu="""
        import pytest

        @pytest.mark.sglang_gpu(2)
        def test_needs_two():
            raise AssertionError("must not run")

        @pytest.mark.gpu(1)
        def test_old_name():
            raise AssertionError("must not run")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*test_gpu.py:7: PytestDeprecationWarning: @pytest.mark.gpu(n) is now @pytest.mark.sglang_gpu(n); the old name still works",
            "SKIPPED [[]1[]] test_gpu.py:3: needs 2 CUDA GPU(s), found 0",  # at the test, not in the plugin
        ]
    )
    # A project whose own `gpu` marker means something else frees the name:
    pytester.makeini("[pytest]\nsglang_gpu_alias = false\nmarkers = gpu: our own\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", "-k", "old_name")
    result.assert_outcomes(failed=1)  # the kit left it alone: it ran


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
    """The tests in the order they ran (a progress line between a test's id and its result makes
    pytest write the id again: counted once)."""
    return list(dict.fromkeys(line.strip().split("::")[-1] for line in result.outlines if "::" in line))


def test_only_runner_tests_are_regrouped_and_marked(pytester):
    pytester.makepyfile(test_order=ORDERING)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    # Default config first, in the slots runner tests held; plain tests stay where they were.
    assert _collected(result) == [
        "test_plain_first",
        "test_runner_a",
        "test_plain_middle",
        "test_runner_b",
        "test_plain_last",
    ]
    selected = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q", "-m", "not sglang_runner")
    assert _collected(selected) == ["test_plain_first", "test_plain_middle", "test_plain_last"]


FACTORY_CONFTEST = """
from pytest_sglang_runner import factories

llama = factories.sglang_runner(model="embedded-llama")
llama_hf = factories.hf_runner(llama)
"""

FACTORY_TESTS = """
from pytest_sglang_runner import assert_logprobs_close

def test_llama_decodes_as_hf(llama, llama_hf):
    assert llama.spec.model == "embedded-llama" and llama.model_runner is not None
    prompts = ["the film was"]
    assert_logprobs_close(llama.forward.generate(prompts, max_new_tokens=4), llama_hf.generate(prompts, max_new_tokens=4))

def test_default_a(runner):
    assert runner.model_config.hf_config.architectures == ["RobertaForMaskedLM"]

def test_llama_again(llama):
    assert llama.forward.logits(["the film was"])[0].isfinite().all()

def test_default_b(sglang_forward):
    pass

def test_two_configs_at_once(runner, llama):
    pass
"""


def _build_lines_of(result) -> list[str]:
    return [line for line in result.outlines if line.startswith("sglang-runner: SGLang") and " built " in line]


def test_factory_fixtures_name_a_config_that_is_ordered_and_built_once(pytester, runpytest_forked):
    pytester.makeconftest(FACTORY_CONFTEST)
    pytester.makepyfile(test_named=FACTORY_TESTS)
    result = runpytest_forked("-p", "no:cacheprovider", "-p", "no:xdist", "-v", "-W", "ignore", *INNER_DEVICE)
    result.assert_outcomes(passed=4, errors=1)
    # The default config first, then the factory's; each built once.
    order = [line.split(" ")[0] for line in _collected(result)[:5]]
    assert order == [
        "test_default_a",
        "test_default_b",
        "test_two_configs_at_once",
        "test_llama_decodes_as_hf",
        "test_llama_again",
    ], order
    result.stdout.fnmatch_lines(
        ["*this test asks for runners of different configs (llama, runner, sglang_live); one runner lives per process*"]
    )
    builds = _build_lines_of(result)
    assert len(builds) == 2 and all(line.endswith(" s") and ": 1 build in " in line for line in builds), builds
    assert "embedded-llama" in builds[1]


@pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="two xdist workers on CUDA need 2 GPUs")
def test_xdist_runs_a_factory_config_on_one_worker(pytester):
    pytester.makeconftest(FACTORY_CONFTEST)
    pytester.makepyfile(test_named=FACTORY_TESTS.split("def test_two_configs_at_once")[0])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-W", "ignore", *INNER_DEVICE)
    result.assert_outcomes(passed=4)
    llama_builds = [line for line in _build_lines_of(result) if "embedded-llama" in line]
    assert len(llama_builds) == 1 and ": 1 build in " in llama_builds[0], _build_lines_of(
        result
    )  # loadgroup: one worker built it


LAST_FAILED = """
import pytest

@pytest.mark.parametrize("i", range(5))
@pytest.mark.sglang(max_total_tokens=2048)
def test_grouped(runner_factory, i):
    pass

@pytest.mark.sglang(max_total_tokens=2048)
def test_fails(runner_factory):
    assert False

@pytest.mark.parametrize("i", range(6))
def test_plain(i):
    pass
"""


NO_BUILD = ("--sglang-device", "cpu")  # nothing is built: two workers need no two GPUs


def test_node_ids_round_trip_under_xdist_and_the_config_stays_on_one_worker(pytester):
    """Under -n 2 a non-default config's tests are reported by their plain node ids (not
    ``ID@sglang-config-HASH``), so --lf, a pasted id and --deselect find them, while the config's
    tests still run on one worker. runner_factory marks a test as a runner test without building."""
    pytester.makepyfile(test_lf=LAST_FAILED)
    first = pytester.runpytest_subprocess("-n", "2", "-v", *NO_BUILD)
    first.assert_outcomes(passed=11, failed=1)
    assert not [line for line in first.outlines if "@" in line and "::" in line], first.outlines
    first.stdout.fnmatch_lines(["FAILED test_lf.py::test_fails - assert False"])
    ran = [
        line
        for line in first.outlines
        if line.startswith("[gw") and ("::test_grouped" in line or "::test_fails" in line)
    ]
    assert len(ran) == 6 and len({line.split("]")[0] for line in ran}) == 1, ran  # one worker ran the config

    again = pytester.runpytest_subprocess("-n", "2", "--lf", *NO_BUILD)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["2 workers [[]1 item[]]"])  # the failure alone was collected
    assert "not in selected tests" not in again.stdout.str()

    pytester.runpytest_subprocess("-n", "2", "test_lf.py::test_fails", *NO_BUILD).assert_outcomes(failed=1)
    pytester.runpytest_subprocess("-n", "2", "--deselect", "test_lf.py::test_fails", *NO_BUILD).assert_outcomes(
        passed=11
    )


def test_a_bad_factory_setting_is_a_usage_error(pytester):
    pytester.makeconftest("from pytest_sglang_runner import factories\n\nbig = factories.sglang_runner(tp=0)\n")
    pytester.makepyfile(test_x="def test_x(big):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*factories.sglang_runner(tp=0): --sglang-tp 0: *"])


@pytest.mark.parametrize("how", [["--sglang-skip"], "ini"])
def test_sglang_skip_skips_the_runner_tests_only(pytester, how):
    pytester.makepyfile(test_order=ORDERING)
    if how == "ini":
        pytester.makeini("[pytest]\nsglang_skip = true\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", *(how if how != "ini" else []))
    result.assert_outcomes(passed=3, skipped=2)
    result.stdout.fnmatch_lines(["*--sglang-skip: tests that use an SGLang runner are skipped*"])


def test_runs_without_xdist(pytester, runpytest_forked):
    pytester.makepyfile(test_x="def test_x(runner):\n    assert runner.model is not None\n")
    result = runpytest_forked("-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore")
    result.assert_outcomes(passed=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU case")
def test_cuda_device_without_a_gpu_is_a_usage_error(pytester, record_property):
    record_property("bad_input", "--sglang-device cuda without a GPU")
    pytester.makepyfile(test_x="def test_x(runner):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sglang-device=cuda", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sglang-device cuda: no CUDA device is visible; use --sglang-device cpu*"])


@pytest.mark.sglang_gpu(1)
def test_more_workers_than_gpus_is_a_usage_error(pytester, record_property):
    record_property("bad_input", "more xdist workers than GPUs")
    workers = torch.cuda.device_count() + 1
    pytester.makepyfile(test_x="def test_x(runner):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", str(workers))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*-n {workers} with --sglang-tp 1 needs {workers} GPUs*"])


def test_an_hf_masked_lm_checkpoint_loads_through_the_model_option(pytester, runpytest_forked, tmp_path):
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
        """
        % str(checkpoint)
    )
    result = runpytest_forked("-p", "no:cacheprovider", "-W", "ignore", f"--sglang-model={checkpoint}")
    result.assert_outcomes(passed=1)


def test_the_embedded_model_is_written_once_per_machine_and_cleared_on_request(
    pytester, tmp_path, monkeypatch, record_property
):
    """The second run reads the model the first one wrote (a persistent, version-keyed cache);
    --sglang-clear-cache writes it again. The run times are quoted in docs/index.md. The test asks
    for the model's directory only (a runner build would add the same SGLang import to each run),
    of the embedded RoBERTa: written in seconds, where embedded-llama trains for up to a minute on
    a loaded CI machine, twice here, for the same check."""
    import time

    from pytest_sglang_runner.models.embedded import bytes_key

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    pytester.makepyfile(
        test_x="def test_x(sglang_model_path):\n    assert sglang_model_path.endswith('embedded-roberta')\n"
    )
    weights = (
        tmp_path / "xdg" / "pytest-sglang-runner" / "models" / bytes_key() / "embedded-roberta" / "model.safetensors"
    )
    stamps, seconds, said = [], [], []
    for args in ([], [], ["--sglang-clear-cache"]):
        started = time.perf_counter()
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-W", "ignore", "--sglang-model=embedded-roberta", *INNER_DEVICE, *args
        )
        seconds.append(time.perf_counter() - started)
        result.assert_outcomes(passed=1)
        stamps.append(weights.stat().st_mtime_ns)
        said.append(
            "sglang-runner: writing the embedded model embedded-roberta (once per machine" in result.stdout.str()
        )
    assert stamps[0] == stamps[1] != stamps[2]
    assert said == [True, False, True]  # the runs that write it say so
    for name, value in zip(("first_run_s", "second_run_s", "cleared_run_s"), seconds):
        record_property(name, round(value, 1))


def test_sglang_import_warnings_stay_out_and_the_projects_own_show(pytester, monkeypatch):
    """SGLang's import raises dozens of its dependencies' deprecations (flashinfer, cutlass,
    quack); they are not the user's, so they neither show nor fail ``-W error`` runs. A warning
    raised by the project's own code during the build (here its model package) still shows."""
    pytester.mkpydir("my_models")
    (pytester.path / "my_models" / "warned.py").write_text(
        "import warnings\n\nwarnings.warn('my_models: the project warns here', UserWarning)\n\nEntryClass = []\n"
    )
    monkeypatch.setenv("SGLANG_EXTERNAL_MODEL_PACKAGE", "my_models")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path), prepend=os.pathsep)
    pytester.makepyfile(
        test_w="def test_w(sglang_forward):\n    assert sglang_forward.logits([[0, 5, 2]])[0].isnan().all(), 'fails on purpose'\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *INNER_DEVICE, "-W", "error::DeprecationWarning")
    result.assert_outcomes(failed=1, warnings=1)
    result.stdout.fnmatch_lines(["*my_models*warned.py:3: UserWarning: my_models: the project warns here"])
    summary = result.stdout.str().split("warnings summary")[1]
    assert not any(name in summary for name in ("flashinfer", "cutlass", "quack", "sglang/")), summary
    # The test that happened to build the runner does not carry SGLang's build log and progress bars.
    failure = result.stdout.str().split("FAILURES")[1].split("warnings summary")[0]
    assert "fails on purpose" in failure and "Captured" not in failure, failure
    # A first run says what its first build waits for, while it waits (before the test's result).
    result.stdout.fnmatch_lines(
        [
            "*sglang-runner: importing SGLang for this process's first build (model=embedded-roberta*",
            "*sglang-runner: built in * s (later builds in this process skip the import)*",
            "F *[[]100%[]]",  # the test's result comes after them
        ]
    )
