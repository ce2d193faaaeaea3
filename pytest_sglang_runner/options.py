"""The kit's settings: one table of options, and the `RunnerSpec` they resolve into.

Every setting is a command-line option and an ini key of the same name (``--sglang-tp`` /
``sglang_tp``). Precedence is explicit: marker or factory argument > command line > ini key >
default. Bad values raise `SpecError`, which the plugin turns into a `pytest.UsageError` naming
the option and the fix; nothing here imports SGLang or torch, so a pytest run that uses no
runner pays nothing for the plugin.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import SpecError

DEVICES = ("auto", "cuda", "cpu")
# Models the kit writes itself (models/embedded.py); "embedded" alone means the default.
EMBEDDED_MODELS = ("embedded-roberta", "embedded-llama")
DEFAULT_MODEL = "embedded-roberta"
# ``tiny:ARCH``: a tiny random checkpoint of any architecture transformers knows (models/tiny.py).
TINY_PREFIX = "tiny:"
DTYPES = ("auto", "float32", "float16", "bfloat16")


def _choice(option: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise SpecError(f"{option} {value!r}: expected one of {', '.join(choices)}")
        return text

    return parse


def _positive_int(option: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            number = int(str(value))
        except ValueError:
            raise SpecError(f"{option} {value!r}: expected a whole number >= 1") from None
        if number < 1:
            raise SpecError(f"{option} {value!r}: expected a whole number >= 1")
        return number

    return parse


def _fraction(option: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(str(value))
        except ValueError:
            raise SpecError(f"{option} {value!r}: expected a number between 0 and 1, e.g. 0.3") from None
        if not 0.0 < number < 1.0:
            raise SpecError(f"{option} {value!r}: expected a number between 0 and 1, e.g. 0.3")
        return number

    return parse


def _seconds(option: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(str(value))
        except ValueError:
            number = -1.0
        if not number >= 0.0 or number == float("inf"):  # NaN and inf too
            raise SpecError(f"{option} {value!r}: expected a number of seconds >= 0 (0: no limit), e.g. {option} 600")
        return number

    return parse


def _model(option: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        from .model_dir import cached_hub_snapshot, check_model_dir, check_tiny_architecture

        text = str(value).strip()
        if not text or text == "embedded":
            return DEFAULT_MODEL
        if text in EMBEDDED_MODELS:
            return text
        if text.startswith(TINY_PREFIX):
            check_tiny_architecture(option, text[len(TINY_PREFIX) :])
            return text
        expanded = os.path.expanduser(text)
        if os.path.exists(expanded):
            check_model_dir(option, text)
            return os.path.abspath(expanded)
        looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep + os.sep in text
        if looks_like_path:
            raise SpecError(f"{option} {text!r}: no such directory; pass an existing model directory or a model id")
        if cached_hub_snapshot(text) is None:
            close = difflib.get_close_matches(text.lower(), EMBEDDED_MODELS, n=1, cutoff=0.75)
            if close:
                raise SpecError(f"{option} {text!r}: no such model; did you mean {close[0]}?")
            raise SpecError(
                f"{option} {text!r}: not a local directory and not in the local Hugging Face cache (tests never "
                "download weights); download it once outside the tests, or pass a directory saved by save_pretrained"
            )
        return text

    return parse


def _text(value: Any) -> str:
    return str(value).strip()


SERVER_ARG_EXAMPLE = "chunked_prefill_size=512"


def _server_arg_example(option: str) -> str:
    """``--sglang-arg chunked_prefill_size=512``, or ``sglang(arg='chunked_prefill_size=512')``."""
    if option.endswith("...)"):
        return option.replace("...", repr(SERVER_ARG_EXAMPLE))
    return f"{option} {SERVER_ARG_EXAMPLE}"


def parse_server_args(option: str, items: Any) -> dict[str, Any]:
    """ServerArgs fields into a dict; values are typed later, against ServerArgs. One string is
    one ``KEY=VALUE`` (a marker's ``arg="k=v"``: iterated, it would be its characters), a list or
    tuple holds many, a mapping is taken as it is. ``option`` names where they were given:
    ``--sglang-arg`` (the flag and the ini key), or ``sglang(arg=...)`` / ``sglang(server_args=...)``."""
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise SpecError(
            f"{option} {items!r}: expected a 'KEY=VALUE' string, a list of them or a dict, "
            f"e.g. {_server_arg_example(option)}"
        )
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise SpecError(
                f"{option} {item!r}: expected KEY=VALUE with a ServerArgs field name, e.g. {_server_arg_example(option)}"
            )
        parsed[key] = value.strip()
    return parsed


@dataclass(frozen=True)
class Option:
    """One setting: its RunnerSpec field, command-line flag, ini key, parser and help."""

    field: str
    help: str
    parse: Callable[[Any], Any]
    metavar: str = "VALUE"
    repeatable: bool = False
    in_spec: bool = True  # False: a setting of the run, not of the runner (never rebuilds it)

    @property
    def flag(self) -> str:
        return "--sglang-" + self.field.replace("_", "-")

    @property
    def ini(self) -> str:
        return "sglang_" + self.field


def _option(name: str, help: str, make_parser: Callable[[str], Callable[[Any], Any]], **kw: Any) -> Option:
    return Option(name, help, make_parser("--sglang-" + name.replace("_", "-")), **kw)


OPTIONS: tuple[Option, ...] = (
    _option(
        "model",
        "model directory, a model id in the local HF cache, or one the kit writes: embedded-roberta (default), "
        "embedded-llama, or tiny:ARCH (a tiny random checkpoint of any architecture, e.g. tiny:MixtralForCausalLM)",
        _model,
        metavar="PATH_OR_ID",
    ),
    _option(
        "device",
        "auto (default: cuda when a GPU is visible, else cpu), cuda or cpu",
        lambda o: _choice(o, DEVICES),
        metavar="DEVICE",
    ),
    _option(
        "dtype",
        "model dtype: "
        + ", ".join(DTYPES)
        + " (default auto: the checkpoint's own dtype, float32 where it names none)",
        lambda o: _choice(o, DTYPES),
        metavar="DTYPE",
    ),
    _option(
        "tp", "tensor-parallel size (default 1; ranks beyond 0 run in child processes)", _positive_int, metavar="N"
    ),
    _option(
        "attention_backend",
        "SGLang attention backend (default: triton on CUDA, torch_native on CPU)",
        lambda o: _text,
        metavar="NAME",
    ),
    _option(
        "mem_fraction",
        "fraction of GPU memory for weights and KV pool, SGLang's mem_fraction_static "
        "(default: SGLang's own, chosen from the GPU's memory)",
        _fraction,
        metavar="F",
    ),
    _option("max_total_tokens", "KV pool size in tokens (default 4096)", _positive_int, metavar="N"),
    _option(
        "arg",
        "any other ServerArgs field, KEY=VALUE; repeatable",
        lambda o: lambda v: parse_server_args(o, v),
        metavar="KEY=VALUE",
        repeatable=True,
    ),
    _option(
        "timeout",
        "seconds a runner build, forward or teardown may take; past it every thread's stack is dumped and the test fails; "
        "also bounds an Engine's or server's start and each request to it "
        "(default 300, 0: no limit; per test: @pytest.mark.sglang(timeout=...))",
        _seconds,
        metavar="SECONDS",
        in_spec=False,
    ),
)
OPTIONS_BY_FIELD = {option.field: option for option in OPTIONS}
RUN_SETTINGS = frozenset(option.field for option in OPTIONS if not option.in_spec)


def _flag(name: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise SpecError(f"@pytest.mark.sglang({name}={value!r}): expected True or False")
        return value

    return parse


# Marker-only settings of a test (how it runs), not of its runner: checked, never part of the spec.
TEST_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "every_rank": _flag("every_rank"),
    "mutates_weights": _flag("mutates_weights"),
}


def _check_server_arg_name(key: str, kit_settings: Any) -> None:
    """A marker's or factory's key that is no kit setting must be a ServerArgs field: a typo fails
    now, with a did-you-mean (kit settings included), not as a silent extra field checked only at
    the build. The names come from the saved schema or SGLang's source, without importing SGLang."""
    from .sglang_compat.server_args import startup_schema, unknown_field_text

    schema = startup_schema()
    problem = None if schema is None else unknown_field_text(key, schema, also=kit_settings)
    if problem is not None:
        raise SpecError(f"--sglang-arg {key}=...: {problem}")


@dataclass(frozen=True)
class RunnerSpec:
    """Everything that decides which runner gets built; equal specs share one runner."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    tp: int = 1
    attention_backend: str = ""
    mem_fraction: float | None = None
    max_total_tokens: int = 4096
    server_args: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def uses_embedded_model(self) -> bool:
        return self.model in EMBEDDED_MODELS

    @property
    def tiny_architecture(self) -> str | None:
        """``ARCH`` of a ``tiny:ARCH`` model, else None."""
        return self.model[len(TINY_PREFIX) :] if self.model.startswith(TINY_PREFIX) else None

    def with_overrides(self, **overrides: Any) -> RunnerSpec:
        """A copy with marker/factory overrides applied; unknown keys go to ServerArgs, and the
        run's own settings (``timeout``) are checked and left out."""
        known = {f.name for f in dataclasses.fields(self)} - {"server_args"}
        changes: dict[str, Any] = {}
        extra = dict(self.server_args)
        for key, value in overrides.items():
            if key in RUN_SETTINGS:  # checked, but no part of the runner's config: it never causes a rebuild
                OPTIONS_BY_FIELD[key].parse(value)
            elif key in TEST_SETTINGS:
                TEST_SETTINGS[key](value)
            elif key in ("arg", "server_args"):
                extra.update(parse_server_args(f"sglang({key}=...)", value))
            elif key in known:
                changes[key] = OPTIONS_BY_FIELD[key].parse(value)
            else:
                _check_server_arg_name(key, known | RUN_SETTINGS | TEST_SETTINGS.keys())
                extra[key] = value
        return dataclasses.replace(self, server_args=tuple(sorted(extra.items())), **changes)

    def describe(self) -> str:
        return f"model={self.model} device={self.device} dtype={self.dtype} tp={self.tp}"


def spec_from_values(get: Callable[[Option], Any]) -> RunnerSpec:
    """Build the spec from a getter that returns each option's raw value, or None when unset."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = get(option)
        if not option.in_spec or raw is None or (option.repeatable and not raw):
            continue
        if option.repeatable:
            values["server_args"] = tuple(sorted(option.parse(raw).items()))
        else:
            values[option.field] = option.parse(raw)
    return RunnerSpec(**values)
