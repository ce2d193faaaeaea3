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
from .tp_views import hf_named_views, hf_shapes

_FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2)}
_FUSED |= {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
_PADDED_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


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
    shapes = hf_shapes(hf_config, "AutoModelForCausalLM")
    return hf_named_views(model, shapes, lambda name: llama_hf_to_sglang(name, hf_config), model.model.embed_tokens)
