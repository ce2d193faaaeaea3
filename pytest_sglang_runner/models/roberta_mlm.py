"""``RobertaForMaskedLM`` for SGLang: its RoBERTa encoder plus HF's LM head, tied to the embeddings.

SGLang ships only ``XLMRobertaModel`` (pooled CLS vector) and
``XLMRobertaForSequenceClassification``; an HF ``roberta-large`` checkpoint is a
``RobertaForMaskedLM`` and SGLang refuses it. This class loads such a checkpoint unmodified and
returns per-token hidden states and vocabulary logits, which is what masked-LM prompting (MeZO)
needs. `register()` adds it to SGLang's model registry; runs it with ``is_embedding=True``.
This module imports SGLang: import it only after the version adapter has prepared the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from sglang.srt.distributed.communication_op import tensor_model_parallel_all_gather
from sglang.srt.distributed.parallel_state import get_tensor_model_parallel_world_size
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.models.roberta import XLMRobertaBaseModel

ARCHITECTURE = "RobertaForMaskedLM"


@dataclass
class MaskedLMOutput:
    """Per-token outputs of one packed batch: rows follow the batch's tokens in order."""

    hidden_states: torch.Tensor  # [total_tokens, hidden]
    logits: torch.Tensor  # [total_tokens, vocab]

    @property
    def embeddings(self) -> torch.Tensor:
        # SGLang's embedding path reads `.embeddings`; for a masked LM that is the logits.
        return self.logits


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
        if get_tensor_model_parallel_world_size() > 1:
            logits = tensor_model_parallel_all_gather(logits)
        return logits[:, :vocab_size] + self.bias


class RobertaForMaskedLM(nn.Module):
    def __init__(self, *, config, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = config
        self.roberta = XLMRobertaBaseModel(config=config, quant_config=quant_config, prefix=prefix)
        self.lm_head = RobertaLMHead(config)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: Optional[torch.Tensor] = None,
        get_embedding: bool = True,
    ) -> MaskedLMOutput:
        hidden_states = self.roberta(input_ids, positions, forward_batch, input_embeds, get_embedding=True)
        decoder_weight = self.roberta.embeddings.word_embeddings.weight
        logits = self.lm_head(hidden_states, decoder_weight, self.config.vocab_size)
        return MaskedLMOutput(hidden_states=hidden_states, logits=logits)

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]):
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
