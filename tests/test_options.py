"""Options, ini keys and usage errors, through a real inner pytest run (pytester)."""

import pytest

from pytest_sglang_runner.errors import SpecError
from pytest_sglang_runner.options import RunnerSpec
from pytest_sglang_runner.sglang_compat import server_args


@pytest.fixture(scope="module", autouse=True)
def sglang_server_args_imported():
    """In-process inner runs drop modules they imported; torch must not be imported twice."""
    import sglang.srt.server_args  # noqa: F401


SHOW_SPEC = """
def test_show(runner_factory):
    print("SPEC", repr(runner_factory.default_spec))
"""


def spec_of(pytester, *args) -> str:
    pytester.makepyfile(test_spec=SHOW_SPEC)
    result = pytester.runpytest_inprocess("-s", "-p", "no:cacheprovider", *args)
    assert result.ret == 0, result.stdout.str()
    return next(line for line in result.outlines if "SPEC RunnerSpec(" in line)


def test_command_line_options_reach_the_spec(pytester, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    line = spec_of(
        pytester,
        f"--sglang-model={model}",
        "--sglang-device=cpu",
        "--sglang-dtype=bfloat16",
        "--sglang-tp=2",
        "--sglang-attention-backend=triton",
        "--sglang-mem-fraction=0.25",
        "--sglang-max-total-tokens=1024",
        "--sglang-arg=chunked_prefill_size=512",
        "--sglang-arg=enable_torch_compile=false",
    )
    assert f"model='{model}'" in line
    assert "device='cpu'" in line and "dtype='bfloat16'" in line and "tp=2" in line
    assert "attention_backend='triton'" in line and "mem_fraction=0.25" in line
    assert "max_total_tokens=1024" in line
    assert "('chunked_prefill_size', '512')" in line and "('enable_torch_compile', 'false')" in line


def test_ini_keys_and_command_line_precedence(pytester):
    pytester.makeini(
        """
        [pytest]
        sglang_device = cpu
        sglang_dtype = float16
        sglang_tp = 3
        sglang_arg =
            chunked_prefill_size=256
        """
    )
    line = spec_of(pytester, "--sglang-tp=1")
    assert "device='cpu'" in line and "dtype='float16'" in line
    assert "tp=1" in line  # the command line wins over the ini key
    assert "('chunked_prefill_size', '256')" in line


def test_defaults_use_the_embedded_model(pytester):
    line = spec_of(pytester)
    assert repr(RunnerSpec()) in line and "model='embedded-roberta'" in line


@pytest.mark.parametrize(
    "value, model",
    [("embedded", "embedded-roberta"), ("embedded-roberta", "embedded-roberta"), ("embedded-llama", "embedded-llama")],
)
def test_embedded_model_names_select_the_kits_models(pytester, value, model):
    assert f"model='{model}'" in spec_of(pytester, f"--sglang-model={value}")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--sglang-tp=0"], "--sglang-tp '0': expected a whole number >= 1"),
        (["--sglang-tp=two"], "--sglang-tp 'two': expected a whole number >= 1"),
        (["--sglang-device=tpu"], "--sglang-device 'tpu': expected one of auto, cuda, cpu"),
        (["--sglang-dtype=float7"], "--sglang-dtype 'float7': expected one of auto, float32, float16, bfloat16"),
        (["--sglang-mem-fraction=1.5"], "--sglang-mem-fraction '1.5': expected a number between 0 and 1"),
        (["--sglang-max-total-tokens=-4"], "--sglang-max-total-tokens '-4': expected a whole number >= 1"),
        (["--sglang-timeout=-1"], "--sglang-timeout '-1': expected a number of seconds >= 0"),
        (["--sglang-timeout=abc"], "--sglang-timeout 'abc': expected a number of seconds >= 0"),
        (["--sglang-timeout=nan"], "--sglang-timeout 'nan': expected a number of seconds >= 0"),
        (["--sglang-model=./no/such/dir"], "--sglang-model './no/such/dir': no such directory"),
        (["--sglang-arg=oops"], "--sglang-arg 'oops': expected KEY=VALUE"),
        (["--sglang-arg=no_such_field=1"], "has no ServerArgs field 'no_such_field'"),
        (["--sglang-arg=chunked_prefill_size=many"], "--sglang-arg chunked_prefill_size=many: expected a int value"),
        (["--sglang-arg=attention_backend=warp"], "--sglang-arg attention_backend=warp: expected one of"),
        (["--sglang-attention-backend=nonsense"], "--sglang-attention-backend 'nonsense': SGLang "),
        (["--sglang-model=no-org/no-such-model"], "not in the local Hugging Face cache (tests never download weights)"),
    ],
)
def test_bad_values_are_usage_errors(pytester, args, expected, schema_cache, record_property):
    record_property("bad_input", " ".join(args))  # counted in docs/reliability.md
    server_args._server_args_schema()  # as a first build would have saved it
    assert_usage_error(pytester, args, expected)


def assert_usage_error(pytester, args, expected):
    """Exit code 4 before any test runs, one short line naming the option, no traceback."""
    pytester.makepyfile(test_x="def test_x(runner):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) <= 2 and expected in result.stderr.str(), lines
    assert "Traceback" not in result.stderr.str()


def _truncate_weights(model):
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


BAD_MODEL_DIRECTORIES = {
    "a file, not a directory": (
        lambda model: model / "config.json",
        None,
        "not a model directory (no config.json inside)",
    ),
    "config.json not JSON": (
        lambda model: model,
        lambda model: (model / "config.json").write_text("{"),
        "config.json is not valid JSON",
    ),
    "config.json a list": (
        lambda model: model,
        lambda model: (model / "config.json").write_text("[]"),
        "not a JSON object",
    ),
    "truncated safetensors": (
        lambda model: model,
        _truncate_weights,
        "model.safetensors is not a complete safetensors file",
    ),
    "stray bytes after the tensors": (
        lambda model: model,
        lambda model: open(model / "model.safetensors", "ab").write(b"xx"),
        "2 stray bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_DIRECTORIES))
def test_a_broken_model_directory_is_a_usage_error_before_anything_imports(
    pytester, tmp_path, case, record_property, embedded_llama
):
    import shutil

    record_property("bad_input", f"--sglang-model: {case}")
    model = tmp_path / "model"
    shutil.copytree(embedded_llama, model)
    path, damage, expected = BAD_MODEL_DIRECTORIES[case]
    if damage is not None:
        damage(model)
    assert_usage_error(pytester, [f"--sglang-model={path(model)}"], expected)


@pytest.mark.parametrize(
    "ini, expected",
    [
        ("sglang_tp = two", "--sglang-tp 'two': expected a whole number >= 1"),
        ("sglang_model = no-org/no-such-model", "not in the local Hugging Face cache"),
        ("sglang_device = gpu", "--sglang-device 'gpu': expected one of"),
        ("sglang_timeout = soon", "--sglang-timeout 'soon': expected a number of seconds >= 0"),
    ],
)
def test_bad_ini_values_are_usage_errors(pytester, ini, expected, record_property):
    record_property("bad_input", f"ini {ini}")
    pytester.makeini(f"[pytest]\n{ini}\n")
    assert_usage_error(pytester, [], expected)


def test_a_bad_marker_fails_its_test_alone_and_names_the_marker(pytester):
    """No collection abort, no traceback: the test with the bad marker fails with one line naming it."""
    pytester.makepyfile(
        test_markers="""
        import pytest

        @pytest.mark.sglang("x")
        def test_positional(sglang_model_path):
            pass

        @pytest.mark.sglang(tp="two")
        def test_bad_value(sglang_model_path):
            pass

        @pytest.mark.sglang(timeout="soon")
        def test_bad_timeout(sglang_model_path):
            pass

        def test_plain():
            pass
    """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=3)
    output = result.stdout.str()
    assert "takes keyword arguments only, e.g. sglang(tp=2) [@pytest.mark.sglang('x')]" in output
    assert "--sglang-tp 'two': expected a whole number >= 1 [@pytest.mark.sglang(tp='two')]" in output
    assert (
        "--sglang-timeout 'soon': expected a number of seconds >= 0 (0: no limit), e.g. --sglang-timeout 600 [@pytest.mark.sglang(timeout='soon')]"
        in output
    )
    assert "Traceback" not in output and "plugin.py" not in output


def test_marker_overrides_are_checked_like_options():
    with pytest.raises(SpecError, match="--sglang-tp 'x'"):
        RunnerSpec().with_overrides(tp="x")
    spec = RunnerSpec().with_overrides(dtype="bfloat16", chunked_prefill_size=64)
    assert spec.dtype == "bfloat16" and spec.server_args == (("chunked_prefill_size", 64),)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("chunked_prefill_size=512", {"chunked_prefill_size": "512"}),  # one string: one field, not its characters
        (
            ["chunked_prefill_size=512", "enable-torch-compile = false"],
            {"chunked_prefill_size": "512", "enable_torch_compile": "false"},
        ),
        (("chunked_prefill_size=512",), {"chunked_prefill_size": "512"}),
        ({"chunked_prefill_size": 512}, {"chunked_prefill_size": 512}),
    ],
)
@pytest.mark.parametrize("key", ["arg", "server_args"])
def test_a_markers_server_args_are_one_key_value_string_a_list_of_them_or_a_dict(key, value, expected):
    assert dict(RunnerSpec().with_overrides(**{key: value}).server_args) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            512,
            "sglang(arg=...) 512: expected a 'KEY=VALUE' string, a list of them or a dict, e.g. sglang(arg='chunked_prefill_size=512')",
        ),
        (None, "sglang(arg=...) None: expected a 'KEY=VALUE' string"),
        (
            ["chunked_prefill_size=512", 2],
            "sglang(arg=...) ['chunked_prefill_size=512', 2]: expected a 'KEY=VALUE' string",
        ),
        (
            "chunked_prefill_size",
            "sglang(arg=...) 'chunked_prefill_size': expected KEY=VALUE with a ServerArgs field name, e.g. sglang(arg='chunked_prefill_size=512')",
        ),
        (["2x=1"], "sglang(arg=...) '2x=1': expected KEY=VALUE with a ServerArgs field name"),
    ],
)
def test_a_bad_marker_arg_names_the_argument_and_the_form_it_takes(value, expected):
    with pytest.raises(SpecError) as raised:
        RunnerSpec().with_overrides(arg=value)
    assert str(raised.value).startswith(expected)


def test_mezo_options_exist_only_where_the_mezo_plugin_is_loaded(pytester):
    plain = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--help")
    assert "--sst2-dir" not in plain.stdout.str() and "sglang-model" in plain.stdout.str()
    markers = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--markers").stdout.str()
    assert "mezo_full" not in markers and "sglang_gpu" in markers
    with_mezo = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-p", "pytest_sglang_runner.mezo_plugin", "--help"
    )
    assert "--sst2-dir" in with_mezo.stdout.str()


def test_sst2_dir_reaches_its_fixture_from_option_and_ini(pytester, tmp_path):
    pytester.makepyfile(test_dir="def test_dir(sst2_dir):\n    print('SST2', sst2_dir)\n")
    pytester.makeini(f"[pytest]\naddopts = -p pytest_sglang_runner.mezo_plugin\nsst2_dir = {tmp_path / 'from-ini'}\n")
    from_ini = pytester.runpytest_inprocess("-s", "-p", "no:cacheprovider")
    from_option = pytester.runpytest_inprocess("-s", "-p", "no:cacheprovider", f"--sst2-dir={tmp_path / 'from-option'}")
    assert any(f"SST2 {tmp_path / 'from-ini'}" in line for line in from_ini.outlines)
    assert any(f"SST2 {tmp_path / 'from-option'}" in line for line in from_option.outlines)
    pytester.makeini("[pytest]\naddopts = -p pytest_sglang_runner.mezo_plugin\nsst2_dir = data/sst2\n")
    relative = pytester.runpytest_inprocess("-s", "-p", "no:cacheprovider")
    assert any(f"SST2 {pytester.path / 'data' / 'sst2'}" in line for line in relative.outlines)


@pytest.fixture
def schema_cache(tmp_path, monkeypatch):
    """An empty cache for the ServerArgs schema (builds save it there; the next run's configure reads it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


IMPORT_REPORT = """
import sys

def pytest_sessionfinish(session):
    print("IMPORTED sglang=%s torch=%s" % ("sglang" in sys.modules, "torch" in sys.modules))
"""


@pytest.mark.parametrize("args", [[], ["--collect-only"], ["--sglang-arg=chunked_prefill_size=64"]])
def test_a_run_without_runner_tests_imports_neither_sglang_nor_torch(pytester, schema_cache, args):
    pytester.makeconftest(IMPORT_REPORT)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *args)
    assert result.ret == 0, result.stderr.str()
    assert "IMPORTED sglang=False torch=False" in result.stdout.str()


def test_an_unknown_attention_backend_before_any_saved_schema_fails_the_runner_tests_in_one_line(
    pytester, runpytest_forked, schema_cache
):
    pytester.makepyfile(test_x="def test_runner(runner):\n    pass\n")
    result = runpytest_forked("-p", "no:cacheprovider", "--sglang-attention-backend=nonsense")
    result.assert_outcomes(errors=1)
    assert "--sglang-attention-backend 'nonsense': SGLang" in result.stdout.str() and "triton" in result.stdout.str()
    assert "Traceback" not in result.stdout.str()
    assert server_args.cached_schema() is not None  # saved for the next run's configure (its choices too)


def test_the_server_args_read_from_sglangs_source_match_the_imported_ones():
    """The startup check of a first run (no saved schema) reads ServerArgs' fields with `ast`; a
    layout it misreads would reject good fields or miss typos."""
    from_source = server_args.source_schema()
    imported = server_args._installed_schema()
    assert from_source is not None and from_source.names == imported.names
    assert from_source.tags == imported.tags
