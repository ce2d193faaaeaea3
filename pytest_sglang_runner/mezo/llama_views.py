"""SGLang's Llama-family tensors under HF's parameter names, so one MeZO drives a decoder on both.

SGLang fuses q/k/v into ``self_attn.qkv_proj`` (grouped-query: q has H heads, k and v Hkv) and
gate/up into ``mlp.gate_up_proj``, and pads the embedding and LM head to a multiple of 64 rows;
HF keeps them apart. `llama_sglang_views` gives HF's names, shapes and order, each a view of
SGLang's storage (under TP, this rank's part with its `Shard`, `tp_views.tp_view`), so from the
same weights and seeds the runner and HF get bitwise the same perturbed weights. A tied LM head
is the embedding (HF lists it once; SGLang's is the same tensor). Imports SGLang only when called.
"""

from __future__ import annotations

import torch

from .params import ParamView
from .tp_views import tp_rank_of, tp_view

_FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2)}
_FUSED |= {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
_PADDED_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def hf_causal_shapes(hf_config) -> list[tuple[str, tuple[int, ...]]]:
    """HF's parameter names and full shapes, in HF's order, for a causal LM of this config (meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def llama_hf_to_sglang(name: str, hf_config) -> tuple[str, int, slice | None]:
    """Where HF parameter ``name`` lives in SGLang at TP=1: (SGLang name, fused part, row slice or None)."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in _FUSED:
        fused, part = _FUSED[parts[-2]]
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        if fused == "qkv_proj":
            sizes = [hf_config.num_attention_heads * head_dim] + [hf_config.num_key_value_heads * head_dim] * 2
        else:
            sizes = [hf_config.intermediate_size] * 2
        start = sum(sizes[:part])
        return ".".join(parts[:-2] + [fused, parts[-1]]), part, slice(start, start + sizes[part])
    if name in _PADDED_VOCAB:
        return name, 0, slice(0, hf_config.vocab_size)
    return name, 0, None


def llama_sglang_views(model: torch.nn.Module, hf_config) -> list[ParamView]:
    """Views of an SGLang Llama-family causal LM's tensors under HF names, in HF order."""
    from ..sglang_compat.bootstrap import tp_world_size

    tp_size = tp_world_size()
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    tp_rank = tp_rank_of(model.model.embed_tokens, tp_size) if tp_size > 1 else 0
    views, covered = [], set()
    for name, full_shape in hf_causal_shapes(hf_config):
        sglang_name, part, rows = llama_hf_to_sglang(name, hf_config)
        tensor = params[sglang_name].data
        if tp_size == 1:
            view = tensor if rows is None else tensor[rows]
            if tuple(view.shape) != full_shape:
                raise NotImplementedError(f"{name}: SGLang holds {tuple(view.shape)}, HF {full_shape}")
            views.append(ParamView(name, view))
        else:
            module = modules[sglang_name.rpartition(".")[0]]
            views.append(tp_view(name, sglang_name, tensor, module, full_shape, tp_rank, tp_size, part))
        covered.add(sglang_name)
    missing = set(params) - covered
    if missing:
        raise ValueError(f"SGLang parameters with no HF counterpart (mapping out of date?): {sorted(missing)}")
    return views
