"""``--sglang-arg KEY=VALUE`` checked and typed against the installed SGLang's ``ServerArgs``."""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import inspect
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import SpecError, UnsupportedSGLang
from ..paths import kit_cache_dir
from .process import installed_version


def _type_tag(annotation: Any) -> str:
    """How a user's text becomes this field's value: bool, int, float, json (lists, dicts) or str."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    if annotation in (bool, int, float):
        return annotation.__name__
    if annotation in (list, dict) or typing.get_origin(annotation) in (list, dict):
        return "json"
    return "str"


def _coerce(key: str, raw: Any, tag: str, choices: Sequence[Any] | None) -> Any:
    value = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if text.lower() in ("none", "null"):
                value = None
            elif tag == "bool":
                if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = text.lower() in ("1", "true", "yes", "on")
            elif tag == "int":
                value = int(text)
            elif tag == "float":
                value = float(text)
            elif tag == "json":
                value = json.loads(text)
            else:
                value = text
        except ValueError:
            raise SpecError(f"--sglang-arg {key}={raw}: expected a {tag} value") from None
    if choices and value is not None and value not in choices:
        raise SpecError(f"--sglang-arg {key}={raw}: expected one of {', '.join(map(str, choices))}")
    return value


@dataclass(frozen=True)
class Schema:
    """ServerArgs as a user's ``KEY=VALUE`` meets it: field names, type tags, CLI choices."""

    names: frozenset[str]
    tags: dict[str, str]
    choices: dict[str, list[Any]]


def _schema_cache_path(version: str) -> Path:
    return kit_cache_dir() / f"server-args-{version}.json"


def cached_schema() -> Schema | None:
    """The schema saved by an earlier build with this SGLang version, read without importing SGLang
    (parsed once per saved file: every marker's ServerArgs key is checked against it)."""
    try:
        path = _schema_cache_path(installed_version())
        return _read_schema(str(path), path.stat().st_mtime_ns)
    except (OSError, UnsupportedSGLang):
        return None


@functools.lru_cache(maxsize=4)
def _read_schema(path: str, mtime_ns: int) -> Schema | None:
    try:
        data = json.loads(Path(path).read_text())
        return Schema(frozenset(data["names"]), data["tags"], data["choices"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tag_of_source(annotation: ast.expr) -> str:
    """`_type_tag` of an annotation as written: ``A[Optional[int], help]``, ``Optional[int]``,
    ``Union[int, None]`` and ``int | None`` are int."""
    while True:
        if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):  # X | None
            parts = [annotation.left, annotation.right]
        elif isinstance(annotation, ast.Subscript):
            outer = ast.unparse(annotation.value).rsplit(".", 1)[-1]
            inner = annotation.slice
            if outer in ("A", "Annotated"):
                annotation = inner.elts[0] if isinstance(inner, ast.Tuple) else inner
                continue
            if outer in ("List", "list", "Dict", "dict"):
                return "json"
            if outer == "Optional":
                parts = [inner]
            elif outer == "Union":
                parts = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
            else:
                return "str"
        else:
            break
        kept = [part for part in parts if ast.unparse(part) not in ("None", "NoneType", "type(None)")]
        if len(kept) != 1:
            return "str"
        annotation = kept[0]
    text = ast.unparse(annotation).strip("'\"")
    return text if text in ("bool", "int", "float") else "json" if text in ("list", "dict", "List", "Dict") else "str"


@functools.cache
def source_schema() -> Schema | None:
    """ServerArgs' field names and types read from the installed SGLang's source with `ast`, in
    milliseconds and without importing it (importing SGLang costs seconds), so that a first run
    stops at startup on an unknown field too. The fields live in ``server_args.py`` up to 0.5.22
    and in ``arg_groups/fields/`` since 0.5.23. None when the layout is not one this knows."""
    try:
        spec = importlib.util.find_spec("sglang")
        root = Path(next(iter(spec.submodule_search_locations or ()))) / "srt"
        files = [root / "server_args.py", *sorted((root / "arg_groups" / "fields").glob("*.py"))]
        tags: dict[str, str] = {}
        for path in files:
            for node in ast.parse(path.read_text()).body if path.exists() else ():
                if not isinstance(node, ast.ClassDef) or (node.name != "ServerArgs" and path.parent.name != "fields"):
                    continue
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        if "ClassVar" not in ast.unparse(stmt.annotation):
                            tags[stmt.target.id] = _tag_of_source(stmt.annotation)
    except (ImportError, ValueError, StopIteration, OSError, SyntaxError, AttributeError, TypeError):
        return None
    if not {"model_path", "tp_size", "mem_fraction_static", "chunked_prefill_size"} <= tags.keys():
        return None  # a layout this does not know: better no check than a wrong one
    return Schema(frozenset(tags), tags, {})


def startup_schema() -> Schema | None:
    """The best schema to be had without importing SGLang: the one a build saved, else the source's."""
    return cached_schema() or source_schema()


def close_names(name: str, names: Any) -> list[str]:
    """The names ``name`` is probably a typo of, best first (a one-letter slip included)."""
    names = sorted(names)
    return difflib.get_close_matches(name, names, n=3, cutoff=0.75) or [n for n in names if name in n][:3]


def unknown_field_text(key: str, schema: Schema, also: Any = ()) -> str | None:
    """Why ``key`` is no ServerArgs field (with a did-you-mean among the fields and ``also``), or None."""
    if key in schema.names:
        return None
    close = close_names(key, {*schema.names, *also})
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"SGLang {installed_version()} has no ServerArgs field {key!r}{hint}"


def _server_args_schema() -> Schema:
    """The installed SGLang's ServerArgs (imports SGLang), saved for `cached_schema` where not saved yet."""
    schema = _installed_schema()
    path = _schema_cache_path(installed_version())
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(
                json.dumps({"names": sorted(schema.names), "tags": schema.tags, "choices": schema.choices})
            )
            partial.replace(path)  # atomic: concurrent sessions never read half a file
        except OSError:
            pass  # a read-only home: the check just stays at the first build
    return schema


@functools.cache
def _installed_schema() -> Schema:
    """Read once per process: building ServerArgs' argparse parser for hundreds of fields is not free."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    names = set(inspect.signature(ServerArgs).parameters)
    hints = typing.get_type_hints(ServerArgs)  # evaluates string annotations (0.5.17)
    parser = argparse.ArgumentParser(add_help=False)
    ServerArgs.add_cli_args(parser)
    choices = {
        action.dest: list(action.choices)
        for action in parser._actions
        if action.choices and all(isinstance(c, (str, int, float, bool)) for c in action.choices)
    }
    return Schema(frozenset(names), {name: _type_tag(hints.get(name, str)) for name in names}, choices)


def typed_server_args(extra: dict[str, Any], schema: Schema | None = None) -> dict[str, Any]:
    """Check user ``KEY=VALUE`` pairs against this SGLang's ServerArgs and give them their types."""
    if not extra:
        return {}
    schema = schema or _server_args_schema()
    typed = {}
    for key, raw in extra.items():
        problem = unknown_field_text(key, schema)
        if problem is not None:
            raise SpecError(f"--sglang-arg {key}=...: {problem}")
        typed[key] = _coerce(key, raw, schema.tags.get(key, "str"), schema.choices.get(key))
    return typed


def check_attention_backend(name: str, schema: Schema | None = None) -> None:
    """``--sglang-attention-backend`` against this SGLang's choices (imports SGLang unless given a schema)."""
    schema = schema or _server_args_schema()
    choices = schema.choices.get("attention_backend")
    if choices and name not in choices:
        raise SpecError(
            f"--sglang-attention-backend {name!r}: SGLang {installed_version()} has {', '.join(map(str, choices))}"
        )


@functools.cache
def server_arg_fields() -> frozenset[str]:
    """The fields this SGLang's ``ServerArgs`` takes."""
    from sglang.srt.server_args import ServerArgs

    return frozenset(inspect.signature(ServerArgs).parameters)


def make_server_args(**kwargs: Any):
    """``ServerArgs`` from the fields this SGLang has (the kit's defaults name some only newer ones take)."""
    from sglang.srt.server_args import ServerArgs

    fields = server_arg_fields()
    return ServerArgs(**{k: v for k, v in kwargs.items() if k in fields})


@functools.cache
def _resolving_view():
    """0.5.23's resolving view, or None; looked up once (a failing import is retried, and costs, on every call)."""
    try:
        from sglang.srt.arg_groups.overrides import resolving_view
    except ImportError:
        return None
    return resolving_view


def resolved(server_args, name: str) -> Any:
    """A ServerArgs value after SGLang's own resolution (0.5.23 resolves into a separate view)."""
    view = _resolving_view()
    return getattr(server_args if view is None else view(server_args), name)
