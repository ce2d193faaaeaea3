"""SGLang's RoBERTa tensors under HF's parameter names: what lets one MeZO drive both backends.

`roberta_sglang_views` maps SGLang's fused, padded layout onto HF's parameters (HF names, HF
shapes, HF order), each a view of SGLang's own storage, so from the same weights and seeds the
runner and HF receive bitwise the same perturbed weights. Under tensor parallelism each rank's
views are its own part of each parameter, with the `Shard` that says where that part sits in
the full one (`_tp_view`). Imports SGLang only when called.
"""

from __future__ import annotations

import torch

from .noise import Shard
from .params import ParamView

_QKV = {"query": 0, "key": 1, "value": 2}

# SGLang parameters that the forward never reads: never perturbed, never compared.
SGLANG_UNUSED = ("roberta.embeddings.position_ids",)


def hf_canonical_shapes(hf_config) -> list[tuple[str, tuple[int, ...]]]:
    """HF's parameter names and full shapes, in HF's order, for a masked LM of this config (meta device)."""
    from transformers import AutoModelForMaskedLM

    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(hf_config)
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def hf_canonical_names(hf_config) -> list[str]:
    """HF's parameter names, in HF's order, for a masked LM of this config (built on the meta device)."""
    return [name for name, _ in hf_canonical_shapes(hf_config)]


def roberta_hf_to_sglang(name: str, hidden_size: int, vocab_size: int) -> tuple[str, slice | None]:
    """Where HF RoBERTa-MLM parameter ``name`` lives in SGLang: (SGLang name, row slice or None).

    q/k/v are rows ``[0:H]``, ``[H:2H]``, ``[2H:3H]`` of the fused ``self_attn.qkv_proj`` (weight
    and bias); the word embedding is padded to a multiple of 64 rows, only ``[0:vocab]`` is real;
    everything else keeps its name. TP=1 (under TP the slices are per rank: `_tp_view`).
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
    from ..sglang_compat.bootstrap import tp_world_size

    tp_size = tp_world_size()
    config = hf_config if hf_config is not None else model.config
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    tp_rank = _tp_rank(model.roberta.embeddings.word_embeddings, tp_size) if tp_size > 1 else 0
    views, covered = [], set()
    for name, full_shape in hf_canonical_shapes(config):
        sglang_name, rows = roberta_hf_to_sglang(name, config.hidden_size, config.vocab_size)
        tensor = params[sglang_name].data
        if tp_size == 1:
            views.append(ParamView(name, tensor if rows is None else tensor[rows]))
        else:
            module = modules[sglang_name.rpartition(".")[0]]
            views.append(_tp_view(name, sglang_name, tensor, module, full_shape, tp_rank, tp_size))
        covered.add(sglang_name)
    missing = set(params) - covered - set(SGLANG_UNUSED)
    if missing:
        raise ValueError(f"SGLang parameters with no HF counterpart (mapping out of date?): {sorted(missing)}")
    return views


def _tp_rank(word_embeddings, tp_size: int) -> int:
    """This process's TP rank, as the vocab-parallel word embedding was built for it."""
    if word_embeddings.tp_size != tp_size:
        raise NotImplementedError(
            f"the word embedding is split {word_embeddings.tp_size} ways, the TP group has {tp_size} ranks"
        )
    first_row = word_embeddings.shard_indices.padded_org_vocab_start_index
    return first_row // (word_embeddings.org_vocab_size_padded // tp_size)


def _tp_view(
    name: str, sglang_name: str, tensor: torch.Tensor, module, full_shape, rank: int, tp_size: int
) -> ParamView:
    """Rank ``rank``'s part of HF parameter ``name`` (full shape ``full_shape``), from SGLang's layer.

    - ``VocabParallelEmbedding`` (word embeddings): rows; rank r holds padded-vocab rows
      ``[r P/W, (r+1) P/W)`` of which those below ``vocab_size`` are real (a rank may hold none);
    - ``QKVParallelLinear``: the local ``qkv_proj`` is ``[q_r; k_r; v_r]``, each the rank's
      ``H/W`` rows of query, key or value (weight and bias);
    - ``ColumnParallelLinear`` (``intermediate.dense``): rows, weight and bias;
    - ``RowParallelLinear`` (``attention.output.dense``, ``output.dense``): the weight's columns;
      the bias is whole on every rank (rank 0 adds it);
    - anything else is whole on every rank.
    """
    from sglang.srt.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
    from sglang.srt.layers.vocab_parallel_embedding import VocabParallelEmbedding

    is_weight = sglang_name.endswith(".weight")
    if isinstance(module, VocabParallelEmbedding):
        indices = module.shard_indices
        start, stop = indices.org_vocab_start_index, indices.org_vocab_end_index
        local, shard = tensor[: stop - start], Shard(full_shape, 0, start, stop - start)
    elif isinstance(module, QKVParallelLinear):
        if module.num_kv_head_replicas != 1 or module.num_heads != module.num_kv_heads:
            raise NotImplementedError(f"{sglang_name}: replicated or grouped k/v heads are not mapped")
        size = module.num_heads * module.head_size
        which = _QKV[name.split(".")[-2]]
        local, shard = tensor[which * size : (which + 1) * size], Shard(full_shape, 0, rank * size, size)
    elif isinstance(module, ColumnParallelLinear):
        size = tensor.shape[0]
        local, shard = tensor, Shard(full_shape, 0, rank * size, size)
    elif isinstance(module, RowParallelLinear) and is_weight:
        size = tensor.shape[1]
        local, shard = tensor, Shard(full_shape, 1, rank * size, size)
    else:
        local, shard = tensor, None
    expected = full_shape if shard is None else shard.local_shape
    if tuple(local.shape) != tuple(expected):
        raise NotImplementedError(
            f"{name}: rank {rank} of {tp_size} holds {tuple(local.shape)}, expected {tuple(expected)} "
            "(a layout padded for this TP size is not mapped)"
        )
    if (
        shard is not None
        and not isinstance(module, VocabParallelEmbedding)
        and shard.length * tp_size != full_shape[shard.dim]
    ):
        raise NotImplementedError(f"{name}: {tp_size} shards of {shard.length} do not make {full_shape[shard.dim]}")
    return ParamView(name, local, shard)
