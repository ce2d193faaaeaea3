"""Every ```python block of README.md and docs/*.md that defines a test runs as pasted.

A page's test blocks, in page order, make one test module, as a reader who pastes them into one
file gets it: a later block may use what an earlier one defined, and each block carries the
imports it needs unless an earlier block has them. A block that starts with ``# conftest.py`` is
that session's conftest.py. ruff checks the module for undefined names and unused imports
(no SGLang needed), then an inner pytest session runs it with the options the page gives and
must pass every test: on CPU, where every one of these pages says its examples run.

services.md's tests start an Engine and a server (minutes on CI's 2 cores in a session of their
own); they are run instead as part of tests/test_services.py, whose Llama config they share, so
they cost no start of their own there: that file must hold them as written, with their imports.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Page:
    args: tuple[str, ...]  # the options the page tells the reader to run it with (besides CPU)
    passed: int  # every test of the page's blocks
    run_by: str | None = None  # a test file of the suite that holds the tests, instead of an inner session


PAGES = {
    "README.md": Page((), 2),
    "docs/decoders.md": Page(("--sglang-model", "embedded-llama", "--sglang-dtype", "float32"), 10),
    "docs/index.md": Page((), 2),
    "docs/initialisation.md": Page((), 1),
    "docs/services.md": Page((), 2, run_by="tests/test_services.py"),
    "docs/tp.md": Page((), 3),
}


def _blocks(page: str) -> list[str]:
    return BLOCK.findall((ROOT / page).read_text())


def snippet_module(page: str) -> str:
    return "\n\n".join(b for b in _blocks(page) if "def test_" in b)


def conftest_blocks(page: str) -> str:
    return "\n\n".join(b for b in _blocks(page) if b.startswith("# conftest.py"))


def test_every_page_with_a_test_block_is_run():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with_tests = {str(p.relative_to(ROOT)) for p in pages if snippet_module(str(p.relative_to(ROOT)))}
    assert with_tests == set(PAGES), "add the page to PAGES with its options and test count"


def _undefined_or_unused(source: str, name: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select", "F821,F401,F811"]
        + ["--output-format", "concise", "--stdin-filename", name, "-"],
        input=source,
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stdout if result.returncode else ""


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_snippets_import_what_they_use(page):
    module = snippet_module(page)
    assert module.count("def test_") == PAGES[page].passed
    problems = _undefined_or_unused(module, f"{page}.py")
    if conftest_blocks(page):
        problems += _undefined_or_unused(conftest_blocks(page), f"{page}-conftest.py")
    assert not problems, f"{page}'s test blocks, pasted in order:\n{problems}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the pages' snippets run in the CPU suite (float32 on CPU)")
@pytest.mark.parametrize("page", sorted(p for p in PAGES if not PAGES[p].run_by))
def test_the_snippets_pass(page, pytester, runpytest_forked, embedded_llama):
    pytester.makepyfile(**{f"test_doc_{Path(page).stem.lower()}": snippet_module(page)})
    if conftest_blocks(page):
        pytester.makeconftest(conftest_blocks(page))
    result = runpytest_forked(
        "-p", "no:cacheprovider", "-W", "ignore", "--sglang-device", "cpu", *PAGES[page].args, timeout=900
    )
    result.assert_outcomes(passed=PAGES[page].passed)


def _top_level(source: str) -> tuple[set[str], dict[str, list[ast.FunctionDef]]]:
    """A module's import statements (normalised by ast) and its functions by name."""
    tree = ast.parse(source)
    imports = {ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))}
    functions: dict[str, list[ast.FunctionDef]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions.setdefault(node.name, []).append(node)
    return imports, functions


def _as_written(function: ast.FunctionDef, decorators: set[str]) -> str:
    """The function as ast reads it, with only the given decorators (the suite may add its own, a skip)."""
    kept = [d for d in function.decorator_list if ast.unparse(d) in decorators]
    return ast.unparse(ast.FunctionDef(**{**function.__dict__, "decorator_list": kept}))


@pytest.mark.parametrize("page", sorted(p for p in PAGES if PAGES[p].run_by))
def test_the_snippets_are_run_by_the_suite_as_written(page):
    run_by = PAGES[page].run_by
    imports, functions = _top_level(snippet_module(page))
    their_imports, theirs = _top_level((ROOT / run_by).read_text())
    assert imports <= their_imports, f"{run_by} lacks {page}'s imports {sorted(imports - their_imports)}"
    assert len([name for name in functions if name.startswith("test_")]) == PAGES[page].passed
    for name, (function,) in functions.items():
        decorators = {ast.unparse(d) for d in function.decorator_list}
        written = _as_written(function, decorators)
        assert [_as_written(f, decorators) for f in theirs.get(name, [])] == [written], (
            f"{run_by} must define {name} once, as {page} does:\n{written}"
        )
