"""Config attributes SGLang's model classes read that transformers 5 no longer writes.

transformers 5 dropped some config attributes and moved others to a new layout (a per-layer
``layer_types`` list instead of an interval, ``hidden_activation`` instead of ``hidden_act``);
SGLang 0.5.23's model classes still read the old names and fail with ``AttributeError`` when the
model is built. `fill_config_gaps` runs on SGLang's ``hf_config`` while ``ModelConfig`` is made
(`fill_config_gaps_while_parsing`, for fields ModelConfig itself reads) and right after it
(`bootstrap` for the kit's runner, `serving` in Engine/server processes), and sets, where absent,
what the old attribute was:

* `_DROPPED_CONFIG_DEFAULTS`, every model type: attributes transformers 5 removed whose old
  default is what the model computes (BERT/RoBERTa ``position_embedding_type``).
* `_TRANSLATIONS`, per ``model_type``: the old attribute read from the new layout, or the
  transformers 4 default where transformers 5 hardwires the behaviour. Only real translations:
  a value the kit would have to guess (what HF does differently, not what it used to be called)
  stays out, and the coverage table says why.

Only attributes that are absent (or None) are set: a checkpoint that still carries the old field
keeps its value.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable

# transformers 5 removed these config attributes; SGLang still reads them (value: the old default).
_DROPPED_CONFIG_DEFAULTS = {"position_embedding_type": "absolute"}


@functools.lru_cache(maxsize=32)
def _config_json(path: str) -> dict:
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text()) if path and file.is_file() else {}
    except (OSError, ValueError):
        return {}


def _field(config, name: str):
    """``config.name``, else the checkpoint's config.json value (top level or ``text_config``):
    SGLang's own config classes (Qwen3-Next's, ...) drop the keys they do not know, which are
    exactly transformers 5's new ones."""
    value = getattr(config, name, None)
    if value is not None:
        return value
    raw = _config_json(str(getattr(config, "_name_or_path", "") or ""))
    return raw.get(name, (raw.get("text_config") or {}).get(name))


def _first_sparse_layer(config) -> int | None:
    """``mlp_layer_types`` as first_k_dense_replace: only for dense layers then sparse ones."""
    kinds = _field(config, "mlp_layer_types")
    if not kinds:
        return None
    first = next((i for i, kind in enumerate(kinds) if kind == "sparse"), len(kinds))
    return first if all(kind == "sparse" for kind in kinds[first:]) else None


def _rotary_dim(config) -> int | None:
    """Partial RoPE: transformers 5 keeps ``partial_rotary_factor`` in ``rope_parameters``."""
    factor = (_field(config, "rope_parameters") or {}).get("partial_rotary_factor")
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim * factor) if factor and head_dim else None


def _full_attention_interval(config) -> int | None:
    """``layer_types`` as the interval SGLang reads: only when the layout is periodic (every
    n-th layer full attention, the rest linear), which is all an interval can say."""
    kinds = _field(config, "layer_types")
    if not kinds or "full_attention" not in kinds:
        return None
    interval = kinds.index("full_attention") + 1
    periodic = all((kind == "full_attention") == ((i + 1) % interval == 0) for i, kind in enumerate(kinds))
    return interval if periodic else None


# model_type -> {attribute: value or f(config) -> value (None: leave it absent)}.
_TRANSLATIONS: dict[str, dict[str, object | Callable]] = {
    # Gemma2: transformers 5 renamed hidden_act to hidden_activation (gemma2.py:231 reads hidden_act).
    "gemma2": {"hidden_act": lambda c: getattr(c, "hidden_activation", None)},
    # DeepSeek V2: transformers 5 hardwires a softmax router with MoE on every layer past
    # first_k_dense_replace; transformers 4 wrote that as moe_layer_freq=1, scoring_func="softmax".
    "deepseek_v2": {"moe_layer_freq": 1, "scoring_func": "softmax", "topk_method": "greedy"},
    # DeepSeek V3: the same, with V3's sigmoid router and its correction bias (noaux_tc), as
    # transformers 4's DeepseekV3Config defaults had them.
    "deepseek_v3": {"moe_layer_freq": 1, "scoring_func": "sigmoid", "topk_method": "noaux_tc"},
    # GLM-4 MoE Lite: first_k_dense_replace became the per-layer mlp_layer_types ("dense"/"sparse").
    "glm4_moe_lite": {"first_k_dense_replace": _first_sparse_layer},
    # Qwen3-Next / Qwen3.5: full_attention_interval became the per-layer layer_types.
    "qwen3_next": {"full_attention_interval": _full_attention_interval},
    "qwen3_5_text": {"full_attention_interval": _full_attention_interval},
    "qwen3_5_moe_text": {"full_attention_interval": _full_attention_interval},
    # HunYuan dense: transformers 5 always builds the q/k layernorms (the checkpoint has them);
    # use_qk_norm, which SGLang reads to build them, is gone.
    "hunyuan_v1_dense": {"use_qk_norm": True},
    # Mamba2: transformers 4 stored intermediate_size = expand * hidden_size and rms_norm=True (the
    # gated RMSNorm transformers 5 always builds); transformers 5 derives the one, drops the other.
    "mamba2": {
        "intermediate_size": lambda c: (
            int(c.expand * c.hidden_size) if getattr(c, "expand", None) and getattr(c, "hidden_size", None) else None
        ),
        "rms_norm": True,
    },
    # HunYuan V3: transformers 5 hardwires a normalised sigmoid router and q/k norms, and lists the
    # dense layers in mlp_layer_types.
    "hy_v3": {"route_norm": True, "use_qk_norm": True, "first_k_dense_replace": _first_sparse_layer},
    # MiniMax-M2: transformers 5 hardwires a sigmoid router with a correction bias and per-layer
    # q/k norms, and keeps partial RoPE in rope_parameters.
    "minimax_m2": {
        "scoring_func": "sigmoid",
        "use_routing_bias": True,
        "use_qk_norm": True,
        "rotary_dim": _rotary_dim,
    },
    # LongCat-Flash: SGLang's own config class does not keep transformers 5's rope_parameters
    # (longcat_flash.py:377 reads rope_theta from it).
    "longcat_flash": {"rope_parameters": lambda c: _field(c, "rope_parameters")},
    # MiMo-V2-Flash: hybrid_layer_pattern (1 = sliding window) became layer_types; ModelConfig reads
    # it while it is built, so this one needs `fill_config_gaps_while_parsing`.
    "mimo_v2_flash": {
        "hybrid_layer_pattern": lambda c: (
            [int(kind == "sliding_attention") for kind in _field(c, "layer_types")]
            if _field(c, "layer_types")
            else None
        )
    },
    # HunYuan MoE: transformers 5 builds the experts at intermediate_size plus one always-on shared
    # MLP; the old config said so with moe_intermediate_size, use_mixed_mlp_moe, num_shared_expert.
    "hunyuan_v1_moe": {
        "use_qk_norm": True,
        "moe_intermediate_size": lambda c: getattr(c, "intermediate_size", None),
        "use_mixed_mlp_moe": 1,
        "num_shared_expert": 1,
    },
}


def _configs(hf_config) -> list:
    return [c for c in (hf_config, getattr(hf_config, "text_config", None)) if c is not None]


def fill_config_gaps(hf_config) -> None:
    """Give a transformers 5 config the attributes SGLang's model classes still read."""
    for config in _configs(hf_config):
        for name, default in _DROPPED_CONFIG_DEFAULTS.items():
            if getattr(config, name, None) is None:
                setattr(config, name, default)
        for name, value in _TRANSLATIONS.get(getattr(config, "model_type", None), {}).items():
            if getattr(config, name, None) is not None:
                continue
            value = value(config) if callable(value) else value
            if value is not None:
                setattr(config, name, value)


def fill_config_gaps_while_parsing() -> None:
    """From now on, ``ModelConfig`` fills the gaps as soon as it has its own copy of the HF config
    (it derives layer ids from some of these fields before a caller could fill them afterwards):
    wraps ``get_hf_text_config`` where model_config.py looks it up. Idempotent."""
    import importlib

    module = importlib.import_module("sglang.srt.configs.model_config")
    original = module.get_hf_text_config
    if getattr(original, "_kit_fills_gaps", False):
        return

    @functools.wraps(original)
    def get_hf_text_config(config):
        fill_config_gaps(config)
        return original(config)

    get_hf_text_config._kit_fills_gaps = True
    module.get_hf_text_config = get_hf_text_config
