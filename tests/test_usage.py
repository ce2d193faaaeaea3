"""Usage errors that help: a did-you-mean for near-miss names, every bad setting stopped at startup
(exit code 4, one line, no traceback), --help that shows the defaults, and runs without SGLang's noise."""

import re

import pytest

from pytest_sglang_runner import devices


@pytest.fixture
def schema_cache(tmp_path, monkeypatch):
    """An empty cache: no ServerArgs schema saved by an earlier build (a first run)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_one_line_usage_error(result, expected):
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize(
    "args, ini, expected",
    [
        (
            ["--sglang-arg=chunked_prefil_size=512"],
            "",
            "--sglang-arg chunked_prefil_size=...: SGLang 0.5.",
        ),
        ([], "sglang_arg =\n    chunked_prefil_size=512", "did you mean chunked_prefill_size?"),
        (
            ["--sglang-model=embeded-llama"],
            "",
            "--sglang-model 'embeded-llama': no such model; did you mean embedded-llama?",
        ),
        (["--sglang-model=embedded-lama"], "", "did you mean embedded-llama?"),
        (
            ["--sglang-model=tiny:MixtralForCausalLm"],
            "",
            "--sglang-model tiny:MixtralForCausalLm: transformers 5.",
        ),
        ([], "sglang_model = tiny:Qwen3MoE", "has no causal-LM class of that name; did you mean Qwen3MoeForCausalLM?"),
    ],
)
def test_a_near_miss_name_is_a_usage_error_with_a_did_you_mean(pytester, schema_cache, args, ini, expected):
    """Before any build saved SGLang's field list: the names come from SGLang's source, unimported."""
    pytester.makepyfile(test_x="def test_x(runner):\n    pass\n")
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert_one_line_usage_error(result, expected)
    if "chunked_prefil_size" in expected:
        assert "did you mean chunked_prefill_size?" in result.stderr.str()
    assert not schema_cache.exists() or not list(schema_cache.rglob("server-args-*"))  # SGLang was never imported


def test_an_unknown_server_arg_stops_a_first_run_at_startup(pytester, schema_cache):
    """No 16 s SGLang import and no failing test for each runner test: exit code 4, no test run."""
    pytester.makepyfile(test_x="def test_plain():\n    pass\n\ndef test_runner(runner):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sglang-arg=no_such_field=1")
    assert_one_line_usage_error(result, "has no ServerArgs field 'no_such_field'")
    assert "passed" not in result.stdout.str()


def test_a_wrongly_typed_server_arg_stops_a_first_run_at_startup(pytester, schema_cache):
    pytester.makepyfile(test_x="def test_runner(runner):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sglang-arg=chunked_prefill_size=many")
    assert_one_line_usage_error(result, "--sglang-arg chunked_prefill_size=many: expected a int value")


MARKER_TYPOS = """
import pytest

@pytest.mark.sglang(chunked_prefil_size=64)
def test_server_arg_typo(sglang_model_path):
    pass

@pytest.mark.sglang(every_rnak=True)
def test_kit_setting_typo(sglang_model_path):
    pass

@pytest.mark.sglang(chunked_prefill_size=64)
def test_good(sglang_model_path):
    pass
"""


def test_an_unknown_marker_key_fails_its_test_with_a_did_you_mean(pytester):
    pytester.makepyfile(test_markers=MARKER_TYPOS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=2)
    output = result.stdout.str()
    assert "--sglang-arg chunked_prefil_size=...: SGLang 0.5." in output
    assert (
        "has no ServerArgs field 'chunked_prefil_size'; did you mean chunked_prefill_size? [@pytest.mark.sglang(chunked_prefil_size=64)]"
        in output
    )
    assert (
        "has no ServerArgs field 'every_rnak'; did you mean every_rank? [@pytest.mark.sglang(every_rnak=True)]"
        in output
    )
    assert "Traceback" not in output


ARG_MARKERS = """
import pytest

@pytest.mark.sglang(arg="chunked_prefill_size=64")
def test_one_string(sglang_model_path):
    pass

@pytest.mark.sglang(arg=64)
def test_not_a_string(sglang_model_path):
    pass
"""


def test_a_marker_arg_string_is_one_field_and_anything_else_fails_its_test(pytester):
    pytester.makepyfile(test_arg=ARG_MARKERS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    assert (
        "sglang(arg=...) 64: expected a 'KEY=VALUE' string, a list of them or a dict, "
        "e.g. sglang(arg='chunked_prefill_size=512') [@pytest.mark.sglang(arg=64)]" in result.stdout.str()
    )


@pytest.mark.parametrize(
    "call, expected",
    [
        ("tp=0", "factories.sglang_runner(tp=0): --sglang-tp 0: expected a whole number >= 1"),
        (
            "chunked_prefil_size=1",
            "factories.sglang_runner(chunked_prefil_size=1): --sglang-arg chunked_prefil_size=...: SGLang 0.5.",
        ),
    ],
)
def test_a_bad_factory_call_in_a_conftest_is_a_one_line_usage_error(pytester, call, expected):
    pytester.makeconftest(f"from pytest_sglang_runner import factories\n\nbig = factories.sglang_runner({call})\n")
    pytester.makepyfile(test_x="def test_x(big):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert_one_line_usage_error(result, expected)
    assert "ImportError" not in result.stderr.str() and "conftest" not in result.stderr.str()


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_cuda_without_a_gpu_is_a_usage_error_at_startup(pytester, monkeypatch, xdist):
    """Known without importing torch: CUDA_VISIBLE_DEVICES hides every GPU (or the machine has none)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.surely_no_gpu()
    pytester.makepyfile(test_x="def test_x(runner):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sglang-device=cuda", *xdist)
    assert_one_line_usage_error(result, "--sglang-device cuda: no CUDA device is visible; use --sglang-device cpu")


def test_help_shows_each_settings_default(pytester):
    """As text: --help stays instant, importing neither SGLang nor torch."""
    pytester.makeconftest(
        "import sys\n\ndef pytest_unconfigure(config):\n    print('IMPORTED', 'sglang' in sys.modules, 'torch' in sys.modules)\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--help")
    assert "IMPORTED False False" in result.stdout.str()
    text = re.sub(r"\s+", " ", result.stdout.str())
    for expected in (
        "--sglang-model=PATH_OR_ID model directory, a model id in the local HF cache, or one the kit writes: "
        "embedded-roberta (default)",
        "--sglang-device=DEVICE auto (default: cuda when a GPU is visible, else cpu), cuda or cpu",
        "(default auto: the checkpoint's own dtype, float32 where it names none)",
        "--sglang-tp=N tensor-parallel size (default 1;",
        "(default: triton on CUDA, torch_native on CPU)",
        "SGLang's mem_fraction_static (default: SGLang's own, chosen from the GPU's memory)",
        "--sglang-max-total-tokens=N KV pool size in tokens (default 4096)",
        "(default 300, 0: no limit;",
    ):
        assert expected in text, expected


TP2_TEST = """
import pytest

@pytest.mark.sglang(tp=2)
def test_tp2(sglang_forward):
    assert sglang_forward([[0, 5, 6, 2]]).logits[0].isfinite().all()
"""


@pytest.mark.skipif(not devices.surely_no_gpu(), reason="a CPU TP=2 run (on a GPU box: test_tp)")
def test_a_tp2_run_is_quiet_from_import_to_exit(pytester):
    """A fresh process (the interpreter's exit seen): no "Ignore import error" from the peer rank's
    import and no torch.__trace record in the captured output (-rA shows each section), no SWIG
    DeprecationWarning in the warnings summary (from an import outside the kit's build) or at exit."""
    # As a server-only test's fixtures do: an SGLang module imported outside the kit's build (whose
    # SWIG-built dependencies warn at import), before any build imports it.
    pytester.makepyfile(test_a_import="def test_import():\n    import sglang.srt.managers.io_struct  # noqa: F401\n")
    pytester.makepyfile(test_tp2=TP2_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--sglang-device=cpu", timeout=600)
    result.assert_outcomes(passed=2)
    output = result.stdout.str() + result.stderr.str()
    assert "Captured" not in output, output
    for noise in ("Ignore import error", "swig", "torch.__trace"):  # (the test's own import warns of other things)
        assert noise.lower() not in output.lower(), noise
    assert [line for line in result.stderr.lines if line.strip()] == []  # sys:1: DeprecationWarning: ... swigvarlink
