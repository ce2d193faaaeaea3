"""The loss MeZO evaluates: prompt-based classification with label words, on HF or on the runner.

A masked LM (`HFMaskedLM`, `SGLangMaskedLM`) turns a prepared batch into vocabulary logits at
each sequence's <mask>; `PromptObjective` turns those into the cross-entropy over the label
words (LM-BFF / MeZO's medium models). Both scorers run the LM head on the <mask> rows only.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
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
    rows only. ``padding`` ("auto": where graphs are on): each batch is padded to its size bucket
    (`buckets.BucketLayout`) with filler sequences whose outputs nobody reads. ``graphs`` ("auto":
    where `sglang_compat.graphs.can_capture` says so): the second batch of a bucket (of a layout,
    without padding) is captured in a CUDA graph, and every later batch of it is copied into that
    graph and replayed, so MeZO's two forwards per step cost two launches whatever the lengths.
    Captured calls share one memory pool and hold no KV slots; at most ``max_graphs`` are kept.
    """

    def __init__(
        self, model_runner, *, graphs: str | bool = "auto", padding: str | bool = "auto", max_graphs: int = 32
    ):
        from ..sglang_compat import graphs as sglang_graphs

        self.runner = model_runner
        self.device = torch.device(model_runner.device)
        self._check_no_prefix_reuse()
        self.views = self._parameter_views(model_runner)
        self.graphs = sglang_graphs.can_capture(model_runner) if graphs == "auto" else bool(graphs)
        self.padding = self.graphs if padding == "auto" else bool(padding)
        if self.graphs and self.padding and not sglang_graphs.attention_takes_kv_directly(model_runner):
            raise ValueError("padded batches are captured only where attention reads k and v as given (triton)")
        config = model_runner.model_config.hf_config
        self.filler_token = next(t for t in (config.bos_token_id, 0, 2) if t is not None and t != config.pad_token_id)
        self.max_graphs = max_graphs
        self._captured: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # key -> captured ModelCall
        self._seen: set[tuple[int, ...]] = set()
        self._pool = None

    def _parameter_views(self, model_runner):
        from .roberta_views import roberta_sglang_views

        return roberta_sglang_views(model_runner.model, model_runner.model_config.hf_config)

    def _check_no_prefix_reuse(self) -> None:
        # KV computed under perturbed weights must never be served from a prefix cache.
        from ..sglang_compat import batches

        if not batches.prefix_cache_disabled(self.runner):
            raise RuntimeError(
                "MeZO changes the weights between forwards: build the runner with disable_radix_cache=True "
                "(e.g. @pytest.mark.sglang(disable_radix_cache=True))"
            )

    @property
    def captured_keys(self) -> list[tuple[int, ...]]:
        """The buckets (layouts, without padding) held as CUDA graphs, oldest first."""
        return list(self._captured)

    def prepare(self, token_lists, mask_positions):
        from ..runner import limits
        from ..sglang_compat import graphs as sglang_graphs

        token_lists = [list(ids) for ids in token_lists]
        lengths = tuple(len(ids) for ids in token_lists)
        starts = [0, *itertools.accumulate(lengths)][:-1]
        rows = [start + position for start, position in zip(starts, mask_positions)]
        bucket = sglang_graphs.bucket_of(self.runner, lengths) if self.padding else None
        key = lengths if bucket is None else bucket.key
        captured = self._captured.get(key)
        if captured is not None:
            limits.check_token_ids(token_lists, self.runner.model_config.vocab_size)  # the sizes were checked
            captured.load(token_lists, rows)
            self._captured.move_to_end(key)
            return captured
        packed_lists = token_lists if bucket is None else bucket.pad(token_lists, self.filler_token)
        if bucket is None:
            self.close()  # a captured layout holds its KV slots: one at a time
        limits.check_batch(self.runner, packed_lists)
        call = sglang_graphs.ModelCall(self.runner, token_lists, rows, bucket=bucket, filler_token=self.filler_token)
        if self.graphs and key in self._seen:
            self._capture(key, call)
        self._seen.add(key)
        return call

    def _capture(self, key, call) -> None:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        call.capture(self._pool)
        self._captured[key] = call
        while len(self._captured) > self.max_graphs:
            self._captured.popitem(last=False)[1].release()

    @torch.no_grad()
    def mask_logits(self, prepared):
        return prepared().logits

    def release(self, prepared) -> None:
        if prepared.graph is None:
            prepared.release()

    def weights_changed(self) -> None:
        self._check_no_prefix_reuse()

    def close(self) -> None:
        """Drop the captured batches (and a captured layout's KV slots; the runner is the session's)."""
        while self._captured:
            self._captured.popitem()[1].release()


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

    def loss_tensor(self, prepared) -> torch.Tensor:
        """The mean cross-entropy on the device (MeZO reads both losses of a step in one sync)."""
        return F.cross_entropy(self.scores(prepared), prepared[1])

    def example_losses(self, prepared) -> torch.Tensor:
        """Each example's cross-entropy, ``[batch]`` (what padding must never change)."""
        return F.cross_entropy(self.scores(prepared), prepared[1], reduction="none")

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
