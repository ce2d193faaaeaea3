"""Extend batches through the scheduler's own preparation, without the scheduler.

``Req`` objects -> ``ScheduleBatch.init_new`` (with a tree cache that caches nothing, as in
SGLang's ``benchmark/one_batch.py``) -> ``prepare_for_extend`` -> ``ForwardBatch.init_new`` ->
``ModelRunner.forward``. `PackedBatch` keeps one such batch to run again (the forward helper,
MeZO); `decoding.DecodeBatch` decodes from one. Also here: the runner's limits and its KV pool.
"""

from __future__ import annotations

import types
from array import array
from dataclasses import dataclass
from typing import Any, Sequence

from ..model_io import kit_request
from ..results import Sampling
from .server_args import resolved

GREEDY = Sampling()


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

    def prefix_device_indices(self, req):
        """A shared prefix's KV slots (0.5.23 reads a request's prefix here; `make_request(prefix_slots=...)`)."""
        return req.kit_prefix_slots[: req.prefix_len]


def _page_size(runner) -> int:
    try:
        from sglang.srt.runtime_context import get_schedule

        return get_schedule().page_size
    except (ImportError, AttributeError):
        return runner.server_args.page_size


def make_request(
    index: int,
    token_ids: Sequence[int],
    *,
    max_new_tokens: int = 0,
    top_logprobs: int | None = None,
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    eos_token_ids=None,
    vocab_size: int | None = None,
    prefix_slots=None,
    sampling: Sampling = GREEDY,
):
    """A request sampled as ``sampling`` says (greedy by default); ``top_logprobs=None`` asks for no
    logprobs at all. ``prefix_slots``: the KV slots of the first ``len(prefix_slots)`` tokens,
    already computed (a shared prefix): only the rest is extended, attending over those slots.

    ``sampling.seed`` becomes SGLang's per-request ``sampling_seed`` where this SGLang has one; its
    sampler reads it only under ``enable_deterministic_inference`` (`decoding.seeded` covers the rest)."""
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    seed = {"sampling_seed": sampling.seed} if "sampling_seed" in SamplingParams.__struct_fields__ else {}
    params = SamplingParams(
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        repetition_penalty=sampling.repetition_penalty,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        max_new_tokens=max_new_tokens,
        stop_token_ids=set(stop_token_ids) or None,
        ignore_eos=ignore_eos,
        **seed,
    )
    params.normalize(None)
    req = Req(
        rid=str(index),
        origin_input_text="",
        origin_input_ids=array("q", token_ids),
        sampling_params=params,
        return_logprob=top_logprobs is not None,
        top_logprobs_num=top_logprobs or 0,
        eos_token_ids=eos_token_ids,
        vocab_size=vocab_size,
    )
    req.full_untruncated_fill_ids = req.origin_input_ids
    req.logprob_start_len = 0 if top_logprobs is not None else -1
    prefix = 0 if prefix_slots is None else len(prefix_slots)
    if prefix and hasattr(req, "prefix_indices"):  # 0.5.17: the request carries its prefix's slots
        req.prefix_indices = prefix_slots
    elif prefix:  # 0.5.23: a prefix length, its slots read from the tree cache (`_NoPrefixCache`)
        req.prefix_len, req.kit_prefix_slots = prefix, prefix_slots
    if hasattr(req, "set_extend_range"):  # runner-builds-groups generation
        req.set_extend_range(prefix, len(req.origin_input_ids))
    else:
        req.extend_end = len(req.origin_input_ids)
    return req


def extend_batch(runner, reqs):
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


def forward_batch_of(runner, batch):
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


def pack_batch(
    runner, token_lists: Sequence[Sequence[int]], capture_hidden: bool = False, prefix_slots=None
) -> PackedBatch:
    """``prefix_slots``: every sequence starts with the same prefix, whose KV is in these slots."""
    requests = [make_request(i, ids, prefix_slots=prefix_slots) for i, ids in enumerate(token_lists)]
    batch = extend_batch(runner, requests)
    forward_batch = forward_batch_of(runner, batch)
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
