"""``--sglang-arg KEY=VALUE`` checked and typed against the installed SGLang's ``ServerArgs``."""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any, Sequence

from ..options import SpecError
from .process import installed_version


def _base_type(annotation: Any) -> Any:
    """``T`` from ``Optional[T]``; other unions read as text."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _coerce(key: str, raw: Any, annotation: Any, choices: Sequence[Any] | None) -> Any:
    base = _base_type(annotation)
    value = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if text.lower() in ("none", "null"):
                value = None
            elif base is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = text.lower() in ("1", "true", "yes", "on")
            elif base is int:
                value = int(text)
            elif base is float:
                value = float(text)
            elif base in (list, dict) or typing.get_origin(base) in (list, dict):
                value = json.loads(text)
            else:
                value = text
        except ValueError:
            type_name = getattr(base, "__name__", str(base))
            raise SpecError(f"--sglang-arg {key}={raw}: expected a {type_name} value") from None
    if choices and value is not None and value not in choices:
        raise SpecError(f"--sglang-arg {key}={raw}: expected one of {', '.join(map(str, choices))}")
    return value


def _server_args_schema() -> tuple[set[str], dict[str, Any], dict[str, Sequence[Any]]]:
    """Field names, their types and their CLI choices, as the installed SGLang declares them."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    names = set(inspect.signature(ServerArgs).parameters)
    hints = typing.get_type_hints(ServerArgs)  # evaluates string annotations (0.5.17)
    parser = argparse.ArgumentParser(add_help=False)
    ServerArgs.add_cli_args(parser)
    choices = {action.dest: action.choices for action in parser._actions if action.choices}
    return names, hints, choices


def typed_server_args(extra: dict[str, Any]) -> dict[str, Any]:
    """Check user ``KEY=VALUE`` pairs against this SGLang's ServerArgs and give them their types."""
    if not extra:
        return {}
    names, hints, choices = _server_args_schema()
    typed = {}
    for key, raw in extra.items():
        if key not in names:
            close = [name for name in sorted(names) if key in name or name in key][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SpecError(f"--sglang-arg {key}=...: SGLang {installed_version()} has no ServerArgs field {key!r}{hint}")
        typed[key] = _coerce(key, raw, hints.get(key, str), choices.get(key))
    return typed


def make_server_args(**kwargs: Any):
    from sglang.srt.server_args import ServerArgs

    fields = inspect.signature(ServerArgs).parameters
    return ServerArgs(**{k: v for k, v in kwargs.items() if k in fields})


def resolved(server_args, name: str) -> Any:
    """A ServerArgs value after SGLang's own resolution (0.5.23 resolves into a separate view)."""
    try:
        from sglang.srt.arg_groups.overrides import resolving_view
    except ImportError:
        return getattr(server_args, name)
    return getattr(resolving_view(server_args), name)

