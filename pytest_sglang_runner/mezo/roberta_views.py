"""SGLang's RoBERTa tensors under HF's parameter names: what lets one MeZO drive both backends.

`roberta_sglang_views` maps SGLang's fused, padded layout onto HF's parameters (HF names, HF
shapes, HF order), each a view of SGLang's own storage, so from the same weights and seeds the
runner and HF receive bitwise the same perturbed weights. Under tensor parallelism each rank's
views are its own part of each parameter, with the `Shard` that says where that part sits in
the full one (`tp_views.tp_view`). Imports SGLang only when called.
"""

from __future__ import annotations

import torch

from .params import ParamView
from .tp_views import hf_named_views, hf_shapes

_QKV = {"query": 0, "key": 1, "value": 2}

# SGLang parameters that the forward never reads: never perturbed, never compared.
SGLANG_UNUSED = ("roberta.embeddings.position_ids",)


def hf_canonical_shapes(hf_config) -> list[tuple[str, tuple[int, ...]]]:
    """HF's parameter names and full shapes, in HF's order, for a masked LM of this config (meta device)."""
    return hf_shapes(hf_config, "AutoModelForMaskedLM")


def hf_canonical_names(hf_config) -> list[str]:
    """HF's parameter names, in HF's order, for a masked LM of this config (built on the meta device)."""
    return [name for name, _ in hf_canonical_shapes(hf_config)]


def roberta_hf_to_sglang(name: str, hidden_size: int, vocab_size: int) -> tuple[str, slice | None]:
    """Where HF RoBERTa-MLM parameter ``name`` lives in SGLang: (SGLang name, row slice or None).

    q/k/v are rows ``[0:H]``, ``[H:2H]``, ``[2H:3H]`` of the fused ``self_attn.qkv_proj`` (weight
    and bias); the word embedding is padded to a multiple of 64 rows, only ``[0:vocab]`` is real;
    everything else keeps its name. TP=1 (under TP the slices are per rank: `tp_views.tp_view`).
    """
    parts = name.split(".")
    if "attention" in parts and "self" in parts:
        i = parts.index("self")
        which, kind = parts[i + 1], parts[i + 2]
        k = _QKV[which]
        sglang = ".".join(parts[:i] + ["self_attn", "qkv_proj", kind])
        return sglang, slice(k * hidden_size, (k + 1) * hidden_size)
    if name == "roberta.embeddings.word_embeddings.weight":
        return name, slice(0, vocab_size)
    return name, None


def roberta_sglang_views(model: torch.nn.Module, hf_config=None) -> list[ParamView]:
    """Views of an SGLang RobertaForMaskedLM's tensors under HF names, in HF order.

    Under TP, each view is this rank's part of the parameter, with its `Shard`; replicated
    parameters (LayerNorms, position and token-type embeddings, row-parallel biases, the LM
    head's dense, layer norm and bias) are whole on every rank and carry no shard.
    """
    config = hf_config if hf_config is not None else model.config

    def locate(name: str) -> tuple[str, int, slice | None]:
        sglang_name, rows = roberta_hf_to_sglang(name, config.hidden_size, config.vocab_size)
        return sglang_name, _QKV[name.split(".")[-2]] if "qkv_proj" in sglang_name else 0, rows

    return hf_named_views(
        model, hf_canonical_shapes(config), locate, model.roberta.embeddings.word_embeddings, SGLANG_UNUSED
    )
