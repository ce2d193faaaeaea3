"""The docs site builds in strict mode (a broken link, a missing anchor or a page left out of the
nav fails), its reference and coverage pages are what the code and the coverage records generate, and its troubleshooting page names
every exception class of the kit and every option the kit's errors name; its numbers page names
only scripts and result files that are committed, and every page quoting a result."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "page, generator",
    [
        ("reference.md", "gen_reference.py"),
        ("coverage.md", "gen_coverage.py"),
    ],  # from the code; from the coverage records
)
def test_the_generated_pages_are_current(page, generator):
    generated = subprocess.run(
        [sys.executable, str(ROOT / "docs" / generator)], capture_output=True, text=True, check=True
    ).stdout
    assert (ROOT / "docs" / page).read_text() == generated, f"run: python docs/{generator} > docs/{page}"


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "index.html").exists() and (
        tmp_path / "site" / "tp" / "index.html"
    ).exists()


# --- troubleshooting.md stays complete (a text scan of the package: no SGLang, no torch) ---------

PACKAGE = ROOT / "pytest_sglang_runner"
SERVICES = PACKAGE / "services"  # the Engine and server fixtures' errors live on docs/services.md


def _exception_classes() -> dict[str, Path]:
    """Every class the package defines that derives from an exception, by name: its file."""
    import ast
    import builtins

    bases: dict[str, tuple[Path, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                names = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                bases[node.name] = (path, names)

    def is_exception(name: str, seen: frozenset = frozenset()) -> bool:
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            return True
        if name in bases and name not in seen:
            return any(is_exception(base, seen | {name}) for base in bases[name][1])
        return name.endswith(("Error", "Exception"))  # pytest.UsageError and the like

    return {
        name: path
        for name, (path, parents) in bases.items()
        if any(is_exception(p, frozenset({name})) for p in parents)
    }


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


def test_troubleshooting_names_every_exception_class_of_the_kit():
    classes = _exception_classes()
    assert {
        "SpecError",
        "RunnerBuildError",
        "UnsupportedSGLang",
        "SGLangTimeout",
        "RankFailure",
        "BatchLimitError",
    } <= set(classes)
    named = _words((ROOT / "docs" / "troubleshooting.md").read_text())
    missing = sorted(name for name, path in classes.items() if SERVICES not in path.parents and name not in named)
    assert not missing, f"docs/troubleshooting.md does not name {missing}"


def _raised_by_the_services() -> set[str]:
    """The exception classes the Engine and server code defines, or imports from the kit's errors module."""
    import ast

    classes = _exception_classes()
    names = {name for name, path in classes.items() if SERVICES in path.parents}
    for path in SERVICES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module == "errors":
                names |= {alias.name for alias in node.names if alias.name in classes}
    return names


def test_the_services_page_names_the_engine_and_server_exception_classes():
    import re

    page = (ROOT / "docs" / "services.md").read_text()
    errors = re.search(r"^## Errors\n(.*?)(?=^## |\Z)", page, re.M | re.S)
    assert errors is not None and errors.group(1).strip(), "docs/services.md needs its ## Errors section"
    classes = _raised_by_the_services()
    assert {"ServiceError", "ServiceRestarted"} <= classes
    missing = sorted(classes - _words(errors.group(1)))
    assert not missing, f"docs/services.md does not name {missing}"


def test_troubleshooting_names_every_option_the_errors_name():
    import re

    flags = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        flags |= set(re.findall(r"SpecError\(\s*f?[\"'](--sglang-[a-z-]+)", text))
        if path.name == "options.py":  # the option parsers' messages start with their own flag
            flags |= {
                "--sglang-" + name.replace("_", "-") for name in re.findall(r"^\s*_option\(\s*\"(\w+)\"", text, re.M)
            }
    assert {"--sglang-arg", "--sglang-device", "--sglang-tp", "--sglang-timeout", "--sglang-model"} <= flags, flags
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    missing = sorted(flag for flag in flags if not re.search(re.escape(flag) + r"(?![a-z-])", page))
    assert not missing, f"docs/troubleshooting.md does not name {missing}"


def test_the_numbers_page_names_committed_sources_and_every_page_that_quotes_results():
    numbers = (ROOT / "docs" / "numbers.md").read_text()
    named = set(re.findall(r"`((?:bench|tests|conftest_examples)/[^`\s]+?)(?:::[^`]*)?`", numbers))
    assert len(named) > 10 and not [path for path in sorted(named) if not (ROOT / path).exists()]
    quoting = {page.name for page in (ROOT / "docs").glob("*.md") if "bench/results" in page.read_text()}
    assert not [page for page in sorted(quoting - {"numbers.md"}) if f"]({page}" not in numbers]
