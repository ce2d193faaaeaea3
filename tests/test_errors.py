"""Every error the kit raises is an SGLangRunnerError, and the ones a user meets before any build
(SGLang missing, no free port) fail the test in a line naming the fix, not a traceback."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pytest_sglang_runner import errors, ports

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_sglang_runner"


def test_every_exception_class_of_the_kit_is_in_errors_and_under_one_base():
    defined_elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(base, "id", getattr(base, "attr", "")).endswith(("Error", "Exception", "Timeout", "Failure"))
                for base in node.bases
            ):
                if path.name != "errors.py":
                    defined_elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert defined_elsewhere == []
    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, BaseException)]
    kit_errors = [cls for cls in classes if not issubclass(cls, Warning)]  # ServiceRestarted is a warning
    assert len(kit_errors) >= 10
    assert all(issubclass(cls, errors.SGLangRunnerError) for cls in kit_errors)
    assert issubclass(errors.SpecError, ValueError) and not issubclass(errors.SGLangTimeout, Exception)


def test_no_free_port_is_a_kit_error_naming_the_lock_directory():
    """Exhausting every ephemeral port of the machine cannot be done here: no attempt is the same path."""
    with pytest.raises(errors.PortsExhausted, match=r"no free TCP port on 127\.0\.0\.1 after 0 tries") as caught:
        ports.reserve_port(attempts=0)
    assert str(ports.LOCK_DIR) in str(caught.value) and "remove that directory" in str(caught.value)


def test_no_free_port_fails_the_runner_test_in_one_line(pytester, monkeypatch):
    """In-process inner run, so the patch (every try taken: the fault itself cannot be made here)
    reaches it and is undone after this test."""
    monkeypatch.setattr(ports.reserve_port, "__defaults__", (0,))
    pytester.makepyfile("def test_needs_a_runner(runner):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no free TCP port on 127.0.0.1 after 0 tries*"])
    assert "Traceback" not in result.stdout.str()


def test_sglang_missing_fails_the_runner_test_naming_the_install(pytester):
    """A real missing import: SGLang's package is unimportable in the inner run, as in an
    environment without it (its metadata stays, so the header still names a version)."""
    pytester.makepyfile(
        no_sglang="""
        import sys


        class NoSGLang:
            \"\"\"Finds no sglang, as an environment without it: the same ModuleNotFoundError.\"\"\"

            def find_spec(self, name, path=None, target=None):
                if name == "sglang" or name.startswith("sglang."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None


        sys.meta_path.insert(0, NoSGLang())
        """,
        test_one="def test_needs_a_runner(runner):\n    pass\n\ndef test_plain():\n    pass\n",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no_sglang", "-W", "ignore")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*SGLang is not installed for *; pip install 'sglang==*' (supported: *), or skip the runner tests with --sglang-skip*"
        ]
    )
    assert "ModuleNotFoundError" not in result.stdout.str()
