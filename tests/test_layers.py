"""The package's imports form layers (docs/architecture.md): read from the code (ast, every import
statement, also those inside functions), no circle, nothing imports a higher layer, and the
SGLang version adapter imports nothing of the kit but the leaf modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_sglang_runner"
NAME = PACKAGE.name

# Lowest first. A module's layer is that of its first name under the package.
LAYERS = (
    ("leaves", {"errors", "results", "tokens", "model_io", "paths", "buckets"}),
    ("version adapter", {"sglang_compat"}),
    ("settings and process helpers", {"options", "model_dir", "devices", "ports", "timeouts"}),
    ("models", {"models"}),
    ("runner, references, comparisons", {"runner", "reference", "compare", "sampling", "snapshots", "invariance"}),
    ("services, MeZO, coverage, two configs", {"services", "mezo", "coverage", "ab"}),
    ("pytest plugins", {"plugin", "mezo_plugin"}),
    (
        "the package and its old module paths",
        {"", "lifecycle", "forward", "generation", "sst2", "factories", "ranks", "limits"},
    ),
)
LEAVES = LAYERS[0][1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.joinpath(*name.split(".")) / "__init__.py").is_file() if name else True


def _exists(name: str) -> bool:
    return _is_package(name) or PACKAGE.joinpath(*name.split(".")).with_suffix(".py").is_file()


def _imports(path: Path) -> set[str]:
    """The kit's modules that ``path`` imports (names relative to the package, "" for its __init__)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
                bases = [NAME + ("." + base if base else "")]
            else:
                bases = [node.module or ""]
            names = [alias.name for alias in node.names]
        else:
            continue
        for base in bases:
            if base != NAME and not base.startswith(NAME + "."):
                continue
            target = base[len(NAME) + 1 :]
            submodules = [f"{target}.{n}".lstrip(".") for n in names if _exists(f"{target}.{n}".lstrip("."))]
            found.update(submodules or [target])
            if submodules and len(submodules) < len(names):
                found.add(target)  # names from the package's __init__ too
    found.discard(module)
    return found


def _layer(module: str) -> int:
    head = module.split(".")[0]
    for index, (_, members) in enumerate(LAYERS):
        if head in members:
            return index
    raise AssertionError(
        f"{module or NAME}: in no layer of tests/test_layers.py; give it one (and docs/architecture.md)"
    )


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_import_reader_sees_relative_absolute_and_nested_imports(tmp_path):
    """The checks below are only as good as the reader: a known module must show the imports it has."""
    edges = _graph()
    assert "errors" in edges["runner.factory"] and "runner.plan" in edges["runner.factory"]
    assert "sglang_compat.bootstrap" in edges["runner.build"]  # from ..sglang_compat import bootstrap, ...
    assert "runner.limits" in edges["mezo.objective"]  # an import inside a method
    assert "plugin.factories" in edges["factories"]


def test_a_circle_and_an_upward_import_would_be_found():
    """Negative controls for the checks: a made-up graph with a circle, and one edge pointing up."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("sglang_compat.batches") < _layer("runner.forward")


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module or NAME} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_version_adapter_imports_only_the_leaf_modules():
    outside = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.startswith("sglang_compat")
        for target in sorted(targets)
        if not target.startswith("sglang_compat") and target not in LEAVES
    ]
    assert outside == []


def test_the_leaf_modules_import_nothing_of_the_kit():
    assert {module: targets for module, targets in _graph().items() if module in LEAVES and targets} == {}


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: _module_name(p) or NAME)
def test_each_package_says_what_lives_there_and_what_it_may_import(init):
    docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert docstring, f"{init}: no docstring"
    if init.parent != PACKAGE:
        assert "import" in docstring, f"{init}: the docstring does not say what the package may import"
