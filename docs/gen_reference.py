"""Writes docs/reference.md from the code: every option, ini key, marker and fixture the kit
registers, with the help text and docstring it registers them with. tests/test_docs.py checks
the committed page equals this output, so the reference cannot drift from the code.

    python docs/gen_reference.py > docs/reference.md
"""

from __future__ import annotations

import inspect

from _pytest.config.argparsing import Parser
from _pytest.fixtures import FixtureFunctionDefinition

from pytest_sglang_runner import factories, mezo_plugin, plugin
from pytest_sglang_runner.plugin import configure

PLUGINS = (
    ("pytest_sglang_runner.plugin", plugin),
    ("pytest_sglang_runner.mezo_plugin (`-p pytest_sglang_runner.mezo_plugin`)", mezo_plugin),
)


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _registered(module) -> Parser:
    parser = Parser(_ispytest=True)
    module.pytest_addoption(parser)
    return parser


def options_table() -> list[str]:
    lines = ["| option | ini key | help |", "|---|---|---|"]
    for _, module in PLUGINS:
        parser = _registered(module)
        inis = dict(parser._inidict)
        for option in parser.getgroup("sglang-runner").options:
            dest = option.attrs()["dest"]
            ini = dest if dest in inis else ""
            inis.pop(dest, None)
            lines.append(
                f"| `{' / '.join(option.names())}` | {f'`{ini}`' if ini else '—'} | {_cell(option.attrs()['help'])} |"
            )
        for name, (help_text, kind, _) in inis.items():
            lines.append(f"| — | `{name}` ({kind}) | {_cell(help_text)} |")
    return lines


def markers_table() -> list[str]:
    markers = [*configure.MARKERS, configure.GPU_ALIAS_MARKER, *mezo_plugin.MARKERS]
    lines = ["| marker | meaning |", "|---|---|"]
    for marker in markers:
        name, _, meaning = marker.partition(": ")
        lines.append(f"| `@pytest.mark.{name}` | {_cell(meaning)} |")
    return lines


def _defined_at(fixture: FixtureFunctionDefinition) -> tuple[str, int]:
    """Where the fixture's function is written: the table lists fixtures in source order (the
    plugin package's ``__init__`` imports them in alphabetical order)."""
    code = fixture._get_wrapped_function().__code__
    return code.co_filename, code.co_firstlineno


def fixtures_table() -> list[str]:
    lines = ["| fixture | scope | from | docstring |", "|---|---|---|---|"]
    for where, module in PLUGINS:
        fixtures = {name: value for name, value in vars(module).items() if isinstance(value, FixtureFunctionDefinition)}
        for name, value in sorted(fixtures.items(), key=lambda item: _defined_at(item[1])):
            scope = value._fixture_function_marker.scope
            lines.append(f"| `{name}` | {scope} | {where.split(' ')[0]} | {_cell(inspect.getdoc(value))} |")
    return lines


def factories_table() -> list[str]:
    lines = ["| factory | docstring |", "|---|---|"]
    for name in ("sglang_runner", "hf_runner"):
        function = getattr(factories, name)
        lines.append(f"| `factories.{name}{inspect.signature(function)}` | {_cell(inspect.getdoc(function))} |")
    return lines


def page() -> str:
    sections = [
        "# Reference",
        "",
        "Generated from the code by `python docs/gen_reference.py > docs/reference.md` (CI checks it is",
        "current). The [index](index.md) explains each of these with examples.",
        "",
        "## Options and ini keys",
        "",
        *options_table(),
        "",
        "## Markers",
        "",
        *markers_table(),
        "",
        "## Fixtures",
        "",
        *fixtures_table(),
        "",
        "## Fixture factories",
        "",
        *factories_table(),
        "",
    ]
    return "\n".join(sections)


if __name__ == "__main__":
    print(page(), end="")
