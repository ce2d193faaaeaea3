"""Cheap checks of a model before anything heavy starts (no SGLang, no torch).

A model directory whose config.json is not JSON, or whose safetensors file was cut short by a
failed copy, would otherwise fail seconds into the build with a parser's traceback from inside
SGLang. A hub id that is not in the local cache would fail there too (tests never download).
Each check reads a few bytes per file, so the plugin runs them while parsing the options. A
``tiny:ARCH`` name is checked against transformers' causal-LM class names (its name tables only).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import SpecError
from .paths import kit_cache_dir  # noqa: F401  (its old home)


def _safetensors_problem(path: Path) -> str | None:
    """Why the file is not a complete safetensors file, or None: its header must parse and its
    tensors must end exactly at the end of the file (what the loader itself demands)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (header_size,) = struct.unpack("<Q", prefix)
        if 8 + header_size > size:
            return f"header of {header_size} bytes does not fit in the file's {size} bytes (cut short?)"
        try:
            header = json.loads(file.read(header_size))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not safetensors JSON"
    expected = 8 + header_size + max(ends, default=0)
    if size != expected:
        return (
            f"{size} bytes where its header needs {expected} (cut short?)"
            if size < expected
            else f"{size - expected} stray bytes after the tensors"
        )
    return None


def check_model_dir(option: str, directory: str) -> None:
    """SpecError naming the option, the file and the fix when the directory cannot be a model."""
    root = Path(os.path.expanduser(directory))
    config = root / "config.json"
    if not config.is_file():
        raise SpecError(
            f"{option} {directory!r}: not a model directory (no config.json inside); pass a directory saved by transformers' save_pretrained"
        )
    try:
        parsed = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(
            f"{option} {directory!r}: config.json is not valid JSON ({exc}); fix it or save the model again"
        ) from None
    if not isinstance(parsed, dict):
        raise SpecError(
            f"{option} {directory!r}: config.json holds a {type(parsed).__name__}, not a JSON object; save the model again"
        )
    for weights in sorted(root.glob("*.safetensors")):
        problem = _safetensors_problem(weights)
        if problem is not None:
            raise SpecError(
                f"{option} {directory!r}: {weights.name} is not a complete safetensors file ({problem}); copy or save the model again"
            )


def cached_hub_snapshot(model_id: str) -> str | None:
    """The local snapshot directory of a hub model id, or None when it is not in the HF cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        config = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repo id at all
        return None
    return os.path.dirname(config) if isinstance(config, str) else None


def causal_lm_classes() -> dict[str, str]:
    """{class name: model_type} of transformers' causal-LM auto mapping (a ``*_text`` model_type
    wins): its name table, no model imported."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: dict[str, str] = {}
    for model_type, class_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        for name in (class_name,) if isinstance(class_name, str) else class_name:
            if name not in names or model_type.endswith("_text"):
                names[name] = model_type
    return names


def check_tiny_architecture(option: str, architecture: str) -> None:
    """``tiny:ARCH`` names a causal-LM class transformers has, or a usage error says the closest."""
    import difflib
    from importlib.metadata import version

    known = causal_lm_classes()
    if architecture not in known:
        lower = {name.lower(): name for name in known}
        started = sorted((n for n in known if n.lower().startswith(architecture.lower())), key=len)
        close = started[:1] or [
            lower[n] for n in difflib.get_close_matches(architecture.lower(), lower, n=1, cutoff=0.6)
        ]
        hint = f"; did you mean {close[0]}?" if close else " (a class name such as MixtralForCausalLM)"
        raise SpecError(
            f"{option} tiny:{architecture}: transformers {version('transformers')} has no causal-LM class of that name{hint}"
        )
