"""The loss MeZO evaluates: prompt-based classification with label words, on HF or on the runner.

A masked LM (`HFMaskedLM`, `SGLangMaskedLM`) turns a prepared batch into vocabulary logits at
each sequence's <mask>; `PromptObjective` turns those into the cross-entropy over the label
words (LM-BFF / MeZO's medium models). Both scorers run the LM head on the <mask> rows only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

from .params import ParamView, hf_parameter_views


class MaskedLM(Protocol):
    views: list[ParamView]
    device: torch.device

    def prepare(self, token_lists: Sequence[Sequence[int]], mask_positions: Sequence[int]) -> Any: ...
    def mask_logits(self, prepared: Any) -> torch.Tensor: ...  # [batch, vocab]
    def release(self, prepared: Any) -> None: ...
    def weights_changed(self) -> None: ...


class HFMaskedLM:
    """An HF RobertaForMaskedLM-style model; the LM head runs on the <mask> rows only."""

    def __init__(self, model: torch.nn.Module, pad_token_id: int | None = None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.pad_token_id = model.config.pad_token_id if pad_token_id is None else pad_token_id
        self.views = hf_parameter_views(model)

    def prepare(self, token_lists, mask_positions):
        width = max(len(ids) for ids in token_lists)
        input_ids = torch.full((len(token_lists), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(token_lists):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        positions = torch.tensor(list(mask_positions))
        return input_ids.to(self.device), attention.to(self.device), positions.to(self.device)

    @torch.no_grad()
    def mask_logits(self, prepared):
        input_ids, attention, positions = prepared
        rows = torch.arange(len(positions), device=self.device)
        base = getattr(self.model, "base_model", None)
        head = getattr(self.model, "lm_head", None)
        if base is not None and head is not None:
            hidden = base(input_ids=input_ids, attention_mask=attention).last_hidden_state
            return head(hidden[rows, positions])
        return self.model(input_ids=input_ids, attention_mask=attention).logits[rows, positions]

    def release(self, prepared) -> None:
        pass

    def weights_changed(self) -> None:
        pass  # HF keeps no state derived from the weights between forwards

    def close(self) -> None:
        pass


class SGLangMaskedLM:
    """The runner's RobertaForMaskedLM, called the way SGLang's graph runners call a model.

    Each batch is packed once (`sglang_compat.graphs.ModelCall`) and the LM head runs on its <mask>
    rows only. ``graphs`` ("auto": where `sglang_compat.graphs.can_capture` says so): a batch whose
    layout (sequence lengths) was seen before is captured in a CUDA graph, and later batches of
    that layout are copied into it and replayed, so MeZO's two forwards per step cost two
    launches. The last captured batch keeps its KV slots until the next layout or `close`.
    """

    def __init__(self, model_runner, *, graphs: str | bool = "auto"):
        from ..sglang_compat import graphs as sglang_graphs
        from .roberta_views import roberta_sglang_views

        self.runner = model_runner
        self.device = torch.device(model_runner.device)
        self._check_no_prefix_reuse()
        self.views = roberta_sglang_views(model_runner.model, model_runner.model_config.hf_config)
        self.graphs = sglang_graphs.can_capture(model_runner) if graphs == "auto" else bool(graphs)
        self._captured = None  # the ModelCall whose graph is kept
        self._seen: set[tuple[int, ...]] = set()

    def _check_no_prefix_reuse(self) -> None:
        # KV computed under perturbed weights must never be served from a prefix cache.
        from ..sglang_compat import batches

        if not batches.prefix_cache_disabled(self.runner):
            raise RuntimeError(
                "MeZO changes the weights between forwards: build the runner with disable_radix_cache=True "
                "(e.g. @pytest.mark.sglang(disable_radix_cache=True))"
            )

    @property
    def captured_layout(self) -> tuple[int, ...] | None:
        """The sequence lengths of the batch held as a CUDA graph, if any."""
        return None if self._captured is None else self._captured.layout

    def prepare(self, token_lists, mask_positions):
        from ..runner import limits
        from ..sglang_compat import graphs as sglang_graphs

        token_lists = [list(ids) for ids in token_lists]
        layout = tuple(len(ids) for ids in token_lists)
        starts = [0, *itertools.accumulate(layout)][:-1]
        rows = [start + position for start, position in zip(starts, mask_positions)]
        if self._captured is not None and self._captured.layout == layout:
            limits.check_token_ids(token_lists, self.runner.model_config.vocab_size)  # the layout was checked
            self._captured.load(token_lists, rows)
            return self._captured
        self.close()  # one batch holds KV slots at a time
        limits.check_batch(self.runner, token_lists)
        call = sglang_graphs.ModelCall(self.runner, token_lists, rows)
        if self.graphs and layout in self._seen:
            call.capture()
            self._captured = call
        self._seen.add(layout)
        return call

    @torch.no_grad()
    def mask_logits(self, prepared):
        return prepared().logits

    def release(self, prepared) -> None:
        if prepared is not self._captured:
            prepared.release()

    def weights_changed(self) -> None:
        self._check_no_prefix_reuse()

    def close(self) -> None:
        """Drop the captured batch and its KV slots (the runner is the session's; it stays)."""
        if self._captured is not None:
            self._captured.release()
            self._captured = None


@dataclass(frozen=True)
class Encoded:
    """One prompt-encoded example: token ids, the <mask> position and the gold label index."""

    input_ids: tuple[int, ...]
    mask_pos: int
    label: int


class PromptObjective:
    """Cross-entropy over the label words' logits at <mask>; the loss closure MeZO evaluates."""

    def __init__(self, lm: MaskedLM, label_word_ids: Sequence[int]):
        self.lm = lm
        self.label_word_ids = torch.tensor(list(label_word_ids), device=lm.device)

    def prepare(self, examples: Sequence[Encoded]):
        """The batch for the LM, and its labels already on the device (no copy between forwards)."""
        prepared = self.lm.prepare([e.input_ids for e in examples], [e.mask_pos for e in examples])
        labels = torch.tensor([e.label for e in examples]).to(self.lm.device, non_blocking=True)
        return prepared, labels

    def scores(self, prepared) -> torch.Tensor:
        batch, _ = prepared
        return self.lm.mask_logits(batch)[:, self.label_word_ids].float()

    def loss(self, prepared) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the prepared batch at the current weights: one host sync."""
        scores = self.scores(prepared)
        labels = prepared[1]
        loss = F.cross_entropy(scores, labels)
        accuracy = (scores.argmax(-1) == labels).float().mean()
        loss_value, accuracy_value = torch.stack([loss, accuracy]).tolist()
        return loss_value, accuracy_value

    def release(self, prepared) -> None:
        self.lm.release(prepared[0])
