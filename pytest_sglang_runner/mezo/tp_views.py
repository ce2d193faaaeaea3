"""SGLang's tensors under HF's parameter names, for any architecture.

An architecture's mapping (`roberta_views`, `llama_views`) says only which HF parameter lives in
which SGLang tensor and, for fused tensors, which part of it (``part``: the index among the fused
pieces, and the rows at TP=1); `hf_named_views` walks HF's parameters with it, and under TP
`tp_view` cuts each rank's part, knowing how SGLang splits each parallel layer. Imports SGLang
only when called.
"""

from __future__ import annotations

from typing import Callable

import torch

from .noise import Shard
from .params import ParamView


def hf_shapes(hf_config, auto_class: str) -> list[tuple[str, tuple[int, ...]]]:
    """HF's parameter names and full shapes, in HF's order, for ``transformers.<auto_class>`` of
    this config (built on the meta device)."""
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, auto_class).from_config(hf_config)
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def hf_named_views(
    model: torch.nn.Module,
    shapes: list[tuple[str, tuple[int, ...]]],
    locate: Callable[[str], tuple[str, int, slice | None]],
    embedding,
    unused: tuple[str, ...] = (),
) -> list[ParamView]:
    """Views of ``model``'s tensors under HF's names and shapes (``shapes``, in HF's order).

    ``locate(hf_name)`` gives (SGLang name, fused part, rows at TP=1 or None); ``embedding`` is the
    vocab-parallel embedding whose split tells this rank's TP rank. Every SGLang parameter but
    ``unused`` must be some HF parameter's home.
    """
    from ..sglang_compat.bootstrap import tp_world_size

    tp_size = tp_world_size()
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    tp_rank = tp_rank_of(embedding, tp_size) if tp_size > 1 else 0
    views, covered = [], set()
    for name, full_shape in shapes:
        sglang_name, part, rows = locate(name)
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
    missing = set(params) - covered - set(unused)
    if missing:
        raise ValueError(f"SGLang parameters with no HF counterpart (mapping out of date?): {sorted(missing)}")
    return views


def tp_rank_of(embedding, tp_size: int) -> int:
    """This process's TP rank, as a vocab-parallel embedding was built for it."""
    if embedding.tp_size != tp_size:
        raise NotImplementedError(f"the embedding is split {embedding.tp_size} ways, the TP group has {tp_size} ranks")
    first_row = embedding.shard_indices.padded_org_vocab_start_index
    return first_row // (embedding.org_vocab_size_padded // tp_size)


def tp_view(name: str, sglang_name: str, tensor, module, full_shape, rank: int, tp_size: int, part: int = 0):
    """Rank ``rank``'s part of HF parameter ``name`` (full shape ``full_shape``), from SGLang's layer.

    - ``VocabParallelEmbedding`` / ``ParallelLMHead``: rows; rank r holds padded-vocab rows
      ``[r P/W, (r+1) P/W)`` of which those below the vocabulary size are real (a rank may hold none);
    - ``QKVParallelLinear``: the local tensor is ``[q_r; k_r; v_r]``, the rank's heads of query
      (``part`` 0), key (1) or value (2); grouped k/v heads split like the query's, not replicated;
    - ``MergedColumnParallelLinear`` (``gate_up_proj``): ``[gate_r; up_r]``, ``part`` 0 or 1;
    - ``ColumnParallelLinear``: rows, weight and bias;
    - ``RowParallelLinear``: the weight's columns; the bias is whole on every rank (rank 0 adds it);
    - anything else is whole on every rank.
    """
    from sglang.srt.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )
    from sglang.srt.layers.vocab_parallel_embedding import VocabParallelEmbedding

    is_weight = sglang_name.endswith(".weight")
    if isinstance(module, VocabParallelEmbedding):
        indices = module.shard_indices
        start, stop = indices.org_vocab_start_index, indices.org_vocab_end_index
        local, shard = tensor[: stop - start], Shard(full_shape, 0, start, stop - start)
    elif isinstance(module, QKVParallelLinear):
        if module.num_kv_head_replicas != 1:
            raise NotImplementedError(f"{sglang_name}: k/v heads replicated across ranks are not mapped")
        sizes = [module.num_heads * module.head_size] + [module.num_kv_heads * module.head_size] * 2
        start = sum(sizes[:part])
        local, shard = tensor[start : start + sizes[part]], Shard(full_shape, 0, rank * sizes[part], sizes[part])
    elif isinstance(module, MergedColumnParallelLinear):
        size = tensor.shape[0] // len(module.output_sizes)
        local, shard = tensor[part * size : (part + 1) * size], Shard(full_shape, 0, rank * size, size)
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
