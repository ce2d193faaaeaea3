"""``RobertaForMaskedLM`` for SGLang: its RoBERTa encoder plus HF's LM head, tied to the embeddings.

SGLang ships only ``XLMRobertaModel`` (pooled CLS vector) and
``XLMRobertaForSequenceClassification``; an HF ``roberta-large`` checkpoint is a
``RobertaForMaskedLM`` and SGLang refuses it. This class loads such a checkpoint unmodified and
returns per-token hidden states and vocabulary logits, which is what masked-LM prompting (MeZO)
needs. `register()` adds it to SGLang's model registry; runs it with ``is_embedding=True``.
Run by SGLang's own scheduler (the Engine, the server) it is an embedding model: each
sequence's <s> vector, L2-normalised, as SGLang's ``XLMRobertaModel`` pools it.

What it does differently from SGLang's own RoBERTa, all for speed: the embeddings compute HF's
padding-aware position ids for the whole packed batch at once (SGLang's loop does one host round
trip per sequence, so no CUDA graph can hold it; bitwise the same result); the encoder fuses each
residual add with its LayerNorm on CUDA and skips the KV write where nothing reads it (`encode`);
a kit call whose `KitRequest` names ``rows`` gets the LM head on those rows only (MeZO needs
the <mask> rows); and a kit call's attention takes k and v as slices of the fused projection
(`sglang_compat.attention`: no copies).
This module imports SGLang: import it only after the version adapter has prepared the process.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from sglang.srt.distributed.communication_op import tensor_model_parallel_all_gather
from sglang.srt.layers.pooler import EmbeddingPoolerOutput, Pooler, PoolingType
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.models.roberta import XLMRobertaBaseModel
from torch import nn

from ..model_io import KitRequest, MaskedLMOutput, current_request
from ..sglang_compat.attention import encoder_attention
from ..sglang_compat.bootstrap import tp_world_size
from .fused import add_layer_norm

ARCHITECTURE = "RobertaForMaskedLM"


class RobertaLMHead(nn.Module):
    """HF's head: dense -> gelu -> LayerNorm -> (tied) decoder + bias."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor, decoder_weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
        x = self.layer_norm(F.gelu(self.dense(hidden_states)))
        logits = x @ decoder_weight.t()  # this rank's slice of the (padded) vocabulary
        if tp_world_size() > 1:
            logits = tensor_model_parallel_all_gather(logits)
        return logits[:, :vocab_size] + self.bias


def packed_embeddings(
    embeddings, input_ids: torch.Tensor, positions: torch.Tensor, token_type_ids=None
) -> torch.Tensor:
    """SGLang's ``RobertaEmbedding`` on a packed batch, without its per-sequence loop.

    HF's position id of a token is ``padding_idx`` + its rank among the sequence's non-pad tokens
    (``padding_idx`` for pads); a packed row's sequence starts ``positions[i]`` rows before it.
    Same arithmetic and the same order of additions as SGLang's, so the result is bitwise equal.
    """
    not_pad = input_ids.ne(embeddings.padding_idx).long()
    running = torch.cumsum(not_pad, dim=0)
    before_start = torch.cat([running.new_zeros(1), running])[
        torch.arange(len(input_ids), device=input_ids.device) - positions
    ]
    position_ids = (running - before_start) * not_pad + embeddings.padding_idx
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    summed = embeddings.word_embeddings(input_ids) + embeddings.token_type_embeddings(token_type_ids)
    return embeddings.LayerNorm(summed + embeddings.position_embeddings(position_ids))


def encode(
    encoder, hidden_states: torch.Tensor, forward_batch: ForwardBatch, save_kv_cache: bool = True
) -> torch.Tensor:
    """SGLang's ``BertEncoder`` layer by layer, through its own modules, with three things left out.

    Each residual add and LayerNorm is one fused pass (`fused.add_layer_norm`); without
    ``save_kv_cache`` (the kit's request says the attention reads k and v as given) no KV is
    stored, since an encoder batch is never extended and nothing would read it back; and then
    k and v are not copied out of the fused projection (`sglang_compat.attention`).
    """
    for layer in encoder.layer:
        attention = layer.attention
        self_attn = attention.self_attn
        qkv, _ = self_attn.qkv_proj(hidden_states)
        q, k, v = qkv.split([self_attn.q_size, self_attn.kv_size, self_attn.kv_size], dim=-1)
        attended = encoder_attention(self_attn.attn, q, k, v, forward_batch, save_kv_cache)
        projected, _ = attention.output.dense(attended)
        attention_output = add_layer_norm(projected, hidden_states, attention.output.LayerNorm)
        intermediate = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attention_output)[0])
        output, _ = layer.output.dense(intermediate)
        hidden_states = add_layer_norm(output, attention_output, layer.output.LayerNorm)
    return hidden_states


class RobertaForMaskedLM(nn.Module):
    def __init__(self, *, config, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = config
        self.roberta = XLMRobertaBaseModel(config=config, quant_config=quant_config, prefix=prefix)
        self.lm_head = RobertaLMHead(config)
        self.pooler = Pooler(pooling_type=PoolingType.CLS, normalize=True)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: torch.Tensor | None = None,
        get_embedding: bool = True,
    ) -> MaskedLMOutput | EmbeddingPoolerOutput:
        """Run by the kit (a `KitRequest` is current): per-token logits and hidden states; by
        SGLang's scheduler: the pooled <s> vector, as from its ``XLMRobertaModel``."""
        request = current_request()
        if input_embeds is not None:  # SGLang's path handles embeddings given from outside
            hidden_states = self.roberta(input_ids, positions, forward_batch, input_embeds, get_embedding=True)
        else:
            embedded = packed_embeddings(self.roberta.embeddings, input_ids, positions, forward_batch.token_type_ids)
            save_kv_cache = request is None or not request.skip_kv_cache_write
            hidden_states = encode(self.roberta.encoder, embedded, forward_batch, save_kv_cache)
        if request is None:  # SGLang's scheduler (Engine, server): an embedding model
            return self.pooler(hidden_states, forward_batch)
        return self._per_token(hidden_states, forward_batch, request)

    def _per_token(
        self, hidden_states: torch.Tensor, forward_batch: ForwardBatch, request: KitRequest
    ) -> MaskedLMOutput:
        rows = request.rows
        decoder_weight = self.roberta.embeddings.word_embeddings.weight
        head_input = hidden_states if rows is None else hidden_states.index_select(0, rows)
        logits = self.lm_head(head_input, decoder_weight, self.config.vocab_size)
        return MaskedLMOutput(hidden_states, logits, pool=lambda: self.pooler(hidden_states, forward_batch).embeddings)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]):
        params = dict(self.named_parameters())
        encoder_weights = []
        for name, tensor in weights:
            if name.startswith("lm_head."):
                if name in ("lm_head.decoder.weight", "lm_head.decoder.bias"):
                    continue  # tied to the word embeddings / lm_head.bias
                default_weight_loader(params[name], tensor)
            else:
                encoder_weights.append((name.removeprefix("roberta."), tensor))
        self.roberta.load_weights(encoder_weights)


EntryClass = [RobertaForMaskedLM]


def register() -> None:
    """Make SGLang's model registry resolve ``RobertaForMaskedLM`` to this class (idempotent)."""
    from sglang.srt.models.registry import ModelRegistry

    ModelRegistry.models[ARCHITECTURE] = RobertaForMaskedLM
