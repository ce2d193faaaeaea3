"""SGLang's RoBERTa tensors under HF's parameter names: what lets one MeZO drive both backends.

`roberta_sglang_views` maps SGLang's fused, padded layout onto HF's parameters (HF names, HF
shapes, HF order), each a view of SGLang's own storage, so from the same weights and seeds the
runner and HF receive bitwise the same perturbed weights. Imports SGLang only when called.
"""

from __future__ import annotations

import torch

from ..mezo.params import ParamView

_QKV = {"query": 0, "key": 1, "value": 2}

# SGLang parameters that the forward never reads: never perturbed, never compared.
SGLANG_UNUSED = ("roberta.embeddings.position_ids",)


def hf_canonical_names(hf_config) -> list[str]:
    """HF's parameter names, in HF's order, for a masked LM of this config (built on the meta device)."""
    from transformers import AutoModelForMaskedLM

    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(hf_config)
    return [name for name, _ in model.named_parameters()]


def roberta_hf_to_sglang(name: str, hidden_size: int, vocab_size: int) -> tuple[str, slice | None]:
    """Where HF RoBERTa-MLM parameter ``name`` lives in SGLang: (SGLang name, row slice or None).

    q/k/v are rows ``[0:H]``, ``[H:2H]``, ``[2H:3H]`` of the fused ``self_attn.qkv_proj`` (weight
    and bias); the word embedding is padded to a multiple of 64 rows, only ``[0:vocab]`` is real;
    everything else keeps its name. TP=1 only.
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
    """Views of an SGLang RobertaForMaskedLM's tensors under HF names, in HF order (TP=1)."""
    from .. import sglang_compat

    if sglang_compat.tp_world_size() != 1:
        raise NotImplementedError("MeZO parameter views map the SGLang RoBERTa layout for TP=1 only")
    config = hf_config if hf_config is not None else model.config
    params = dict(model.named_parameters())
    views, covered = [], set()
    for name in hf_canonical_names(config):
        sglang_name, rows = roberta_hf_to_sglang(name, config.hidden_size, config.vocab_size)
        tensor = params[sglang_name].data
        views.append(ParamView(name, tensor if rows is None else tensor[rows]))
        covered.add(sglang_name)
    missing = set(params) - covered - set(SGLANG_UNUSED)
    if missing:
        raise ValueError(f"SGLang parameters with no HF counterpart (mapping out of date?): {sorted(missing)}")
    return views
