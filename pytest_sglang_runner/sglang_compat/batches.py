"""Batches through the scheduler's own preparation, without the scheduler.

``Req`` objects -> ``ScheduleBatch.init_new`` (with a tree cache that caches nothing, as in
SGLang's ``benchmark/one_batch.py``) -> ``prepare_for_extend`` -> ``ForwardBatch.init_new`` ->
``ModelRunner.forward``. A `GreedyBatch` then decodes the way the scheduler does: each sampled
token is appended to its ``Req`` and the request's finish state updated (EOS, stop tokens,
``max_new_tokens``), finished requests are filtered out, ``prepare_for_decode`` allocates the
next KV slot, and ``ModelRunner.forward`` replays a captured CUDA graph when the batch fits one.
Tokens come from SGLang's sampler and logprobs are SGLang's own (the logits processor's for the
prompt, the sampler's for the output), read back into plain Python here.
"""

from __future__ import annotations

import types
from array import array
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..model_io import kit_request
from .server_args import resolved


class _NoPrefixCache(types.SimpleNamespace):
    """What ScheduleBatch asks of a tree cache when nothing is cached (as in SGLang's one_batch)."""

    def supports_swa(self) -> bool:
        return False

    def supports_mamba(self) -> bool:
        return False

    def supports_prefix_sharing(self) -> bool:
        return True

    def is_chunk_cache(self) -> bool:
        return False

    def is_tree_cache(self) -> bool:
        return True

    def evict(self, params) -> None:
        pass

    def maybe_hand_to_session(self, req) -> None:
        pass

    def evict_for_alloc(self, *args, **kwargs) -> None:
        pass  # nothing cached, nothing to evict: the allocation's own out-of-memory error follows


def _page_size(runner) -> int:
    try:
        from sglang.srt.runtime_context import get_schedule

        return get_schedule().page_size
    except (ImportError, AttributeError):
        return runner.server_args.page_size


def _make_request(
    index: int,
    token_ids: Sequence[int],
    *,
    max_new_tokens: int = 0,
    top_logprobs: int | None = None,
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    eos_token_ids=None,
    vocab_size: int | None = None,
):
    """A greedy request; ``top_logprobs=None`` asks for no logprobs at all."""
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    sampling = SamplingParams(
        temperature=0, max_new_tokens=max_new_tokens, stop_token_ids=set(stop_token_ids) or None, ignore_eos=ignore_eos
    )
    sampling.normalize(None)
    req = Req(
        rid=str(index),
        origin_input_text="",
        origin_input_ids=array("q", token_ids),
        sampling_params=sampling,
        return_logprob=top_logprobs is not None,
        top_logprobs_num=top_logprobs or 0,
        eos_token_ids=eos_token_ids,
        vocab_size=vocab_size,
    )
    req.full_untruncated_fill_ids = req.origin_input_ids
    req.logprob_start_len = 0 if top_logprobs is not None else -1
    if hasattr(req, "set_extend_range"):  # runner-builds-groups generation
        req.set_extend_range(len(req.prefix_indices), len(req.origin_input_ids))
    else:
        req.extend_end = len(req.origin_input_ids)
    return req


def _extend_batch(runner, reqs):
    from sglang.srt.managers.schedule_batch import ScheduleBatch
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    tree_cache = _NoPrefixCache(
        page_size=_page_size(runner), device=runner.device, token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator
    )
    batch = ScheduleBatch.init_new(
        reqs=reqs,
        req_to_token_pool=runner.req_to_token_pool,
        token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator,
        tree_cache=tree_cache,
        model_config=runner.model_config,
        enable_overlap=False,
        spec_algorithm=SpeculativeAlgorithm.NONE,
    )
    batch.prepare_for_extend()
    if batch.input_ids is None and getattr(batch, "prefill_input_ids_cpu", None) is not None:
        batch.input_ids = batch.prefill_input_ids_cpu.to(batch.device, non_blocking=True)
        batch.prefill_input_ids_cpu = None
    return batch


def _forward_batch(runner, batch):
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    return ForwardBatch.init_new(batch, runner, return_hidden_states_before_norm=False)


# ---------------------------------------------------------------------------------------------
# One extend batch, run as often as wanted (forward helper, MeZO)
# ---------------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """The SGLang objects for one extend batch; `forward_batch` can be run again as is."""

    schedule_batch: Any
    forward_batch: Any


def pack_batch(runner, token_lists: Sequence[Sequence[int]], capture_hidden: bool = False) -> PackedBatch:
    batch = _extend_batch(runner, [_make_request(i, ids) for i, ids in enumerate(token_lists)])
    forward_batch = _forward_batch(runner, batch)
    if capture_hidden and runner.is_generation:
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode

        forward_batch.capture_hidden_mode = CaptureHiddenMode.FULL
    return PackedBatch(batch, forward_batch)


def run_packed(runner, packed: PackedBatch):
    """The model's raw output for a packed batch, run as a kit call (`model_io.kit_request`):
    LogitsProcessorOutput (generative models), the kit's MaskedLMOutput, or EmbeddingPoolerOutput."""
    with kit_request():
        output = runner.forward(packed.forward_batch)
    return getattr(output, "logits_output", output)


def free_kv(runner) -> None:
    """Give every request slot and KV slot back (only one batch is ever alive)."""
    runner.req_to_token_pool.clear()
    runner.token_to_kv_pool_allocator.clear()


def free_kv_slots(runner) -> int:
    return runner.token_to_kv_pool_allocator.available_size()


@dataclass(frozen=True)
class Limits:
    """What one batch may ask of this runner right now."""

    kv_slots: int  # free KV cache slots (tokens)
    request_slots: int  # free request slots (sequences)
    max_sequence: int  # longest sequence the model's positions (and the request table) take
    vocab_size: int


# Models whose learned positions start after the padding index (HF's create_position_ids_from_input_ids).
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert")


def runner_limits(runner) -> Limits:
    config = runner.model_config
    longest = min(config.context_len, runner.req_to_token_pool.req_to_token.shape[1])
    hf_config = config.hf_config
    if getattr(hf_config, "model_type", "") in _POSITIONS_AFTER_PADDING:
        longest = min(longest, hf_config.max_position_embeddings - hf_config.pad_token_id - 1)
    return Limits(free_kv_slots(runner), runner.req_to_token_pool.available_size(), longest, config.vocab_size)


def prefix_cache_disabled(runner) -> bool:
    return bool(resolved(runner.server_args, "disable_radix_cache"))


# ---------------------------------------------------------------------------------------------
# Greedy generation: extend, then decode steps
# ---------------------------------------------------------------------------------------------


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _top(ids, logprobs) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(_as_list(ids), _as_list(logprobs))}


@dataclass
class Step:
    """One forward of a `GreedyBatch`, in plain Python; ``rows`` are the prompts that took part."""

    rows: list[int]
    token_ids: list[int]
    graph: bool  # ModelRunner.forward replayed a captured CUDA graph
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    # Extend step only, per row: (logprob of prompt token i+1, top-k) at each position i < len - 1.
    prompt_logprobs: list[list[tuple[float, dict[int, float]]]] | None = field(default=None, repr=False)


class GreedyBatch:
    """Prompts through one extend forward, then decode steps, as SGLang's scheduler runs them."""

    def __init__(
        self,
        runner,
        token_lists: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        top_logprobs: int | None,
        stop_token_ids: Sequence[int] = (),
        ignore_eos: bool = False,
    ):
        self.runner = runner
        self.top_logprobs = top_logprobs
        config = runner.model_config
        self.requests = [
            _make_request(
                i,
                ids,
                max_new_tokens=max_new_tokens,
                top_logprobs=top_logprobs,
                stop_token_ids=stop_token_ids,
                ignore_eos=ignore_eos,
                eos_token_ids=config.hf_eos_token_id,
                vocab_size=config.vocab_size,
            )
            for i, ids in enumerate(token_lists)
        ]
        self._rows = list(range(len(self.requests)))
        self._batch = _extend_batch(runner, list(self.requests))
        self._extending = True

    @property
    def done(self) -> bool:
        return not self._rows

    def step(self) -> Step:
        """Run the current batch (the prompts first, then one decode step) and sample each row's next token."""
        import torch

        forward_batch = _forward_batch(self.runner, self._batch)
        with torch.no_grad():
            output = self.runner.forward(forward_batch)
            logits = output.logits_output
            next_ids = self.runner.sample(logits, forward_batch)
        step = Step(rows=list(self._rows), token_ids=_as_list(next_ids), graph=bool(getattr(output, "can_run_graph", False)))
        if self.top_logprobs is not None:
            step.logprobs = [float(v) for v in _as_list(logits.next_token_logprobs)]
            if self.top_logprobs:
                step.top_logprobs = [
                    _top(ids, values) for ids, values in zip(logits.next_token_top_logprobs_idx, logits.next_token_top_logprobs_val)
                ]
            if self._extending:
                step.prompt_logprobs = self._prompt_logprobs(logits)
        self._accept(next_ids)
        return step

    def _prompt_logprobs(self, logits) -> list[list[tuple[float, dict[int, float]]]]:
        chosen = _as_list(logits.input_token_logprobs)
        tops = zip(logits.input_top_logprobs_idx, logits.input_top_logprobs_val) if self.top_logprobs else None
        per_row, start = [], 0
        for req in self.requests:
            length = len(req.origin_input_ids)
            top_ids, top_values = next(tops) if tops is not None else ([], [])
            per_row.append(
                [
                    (float(chosen[start + i]), _top(top_ids[i], top_values[i]) if tops is not None else {})
                    for i in range(length - 1)
                ]
            )
            start += length
        return per_row

    def _accept(self, next_ids) -> None:
        """What the scheduler does with a step's tokens: append, update finish state, drop finished rows."""
        import torch

        self._batch.input_ids = next_ids.to(torch.int64)
        for req, token in zip(self._batch.reqs, _as_list(next_ids)):
            req.output_ids.append(int(token))
            req.update_finish_state(1)
        self._rows = [row for row, req in zip(self._rows, self._batch.reqs) if not req.finished()]
        self._batch.filter_batch()
        self._extending = False
        if self._rows:
            self._batch.prepare_for_decode()

    def output_ids(self, row: int) -> list[int]:
        return [int(t) for t in self.requests[row].output_ids_through_stop]

    def finish_reason(self, row: int) -> str | None:
        """``"stop"`` (EOS or a stop token), ``"length"`` (``max_new_tokens``), as SGLang reports it."""
        reason = self.requests[row].finished_reason
        return reason.to_json().get("type") if reason is not None else None
