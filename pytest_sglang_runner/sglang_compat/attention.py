"""Encoder attention for the kit's own calls, without the two copies per layer SGLang makes.

SGLang's Triton extend path (``TritonAttnBackend.forward_extend``, 0.5.17) calls its kernel with
``k.contiguous()`` and ``v.contiguous()``; k and v are column slices of the fused QKV projection,
so that is two copies per layer (48 kernels a RoBERTa-large forward, a tenth of a short batch's
kernels). The kernel takes k's and v's row and head strides, so `encoder_attention` hands it the
slices as they are, where the call is the plain one: a kit call that writes no KV, bidirectional
(encoder) attention, no KV scales, sliding window, sinks, context parallelism or deterministic
mode, and the kernel's parameters as checked. Anything else goes through SGLang's own path.
Same kernel, same values: the result is bitwise SGLang's (`tests/mezo/test_buckets.py`).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

# The kernel's parameters as the direct call passes them (SGLang 0.5.17's extend_attention_fwd).
_KERNEL_PARAMETERS = (
    "logit_cap",
    "sliding_window_size",
    "sinks",
    "window_kv_offsets",
    "xai_temperature_len",
    "page_size",
)
_checked_kernels: dict = {}
_direct_enabled = True
direct_calls = 0  # how many layer calls took the direct path (eager ones; a graph's replays are not counted)


@contextlib.contextmanager
def sglang_path() -> Iterator[None]:
    """Within: every encoder attention goes through SGLang's own path (to compare against)."""
    global _direct_enabled
    before, _direct_enabled = _direct_enabled, False
    try:
        yield
    finally:
        _direct_enabled = before


def _current_backend(forward_batch):
    try:
        from sglang.srt.model_executor.forward_context import get_attn_backend

        return get_attn_backend()
    except (ImportError, AttributeError, AssertionError):
        return getattr(forward_batch, "attn_backend", None)


def _kernel_takes_the_call(kernel) -> bool:
    if kernel not in _checked_kernels:
        try:
            parameters = inspect.signature(kernel).parameters
        except (TypeError, ValueError):
            parameters = {}
        _checked_kernels[kernel] = all(name in parameters for name in _KERNEL_PARAMETERS)
    return _checked_kernels[kernel]


def _direct_backend(attn, forward_batch, save_kv_cache: bool):
    """The backend when the direct call is the one SGLang would make (see the module's docstring)."""
    if save_kv_cache or not _direct_enabled or not forward_batch.forward_mode.is_extend():
        return None
    backend = _current_backend(forward_batch)
    if type(backend).__name__ != "TritonAttnBackend" or getattr(backend, "forward_metadata", None) is None:
        return None
    from sglang.srt.layers.radix_attention import AttentionType

    plain_layer = (
        getattr(attn, "attn_type", None) == AttentionType.ENCODER_ONLY
        and attn.k_scale is None
        and getattr(attn, "sliding_window_size", -1) in (None, -1)
        and attn.qk_head_dim == attn.v_head_dim
    )
    plain_backend = getattr(backend, "dcp_size", 1) == 1 and not getattr(backend, "enable_deterministic", False)
    if not (plain_layer and plain_backend and _kernel_takes_the_call(backend.extend_attention_fwd)):
        return None
    return backend


def encoder_attention(attn, q, k, v, forward_batch, save_kv_cache: bool = True):
    """``attn(q, k, v, forward_batch, save_kv_cache=...)``, the same result; for the plain call,
    the Triton kernel on k and v as slices of the fused projection."""
    import torch

    backend = _direct_backend(attn, forward_batch, save_kv_cache)
    if backend is None:
        return attn(q, k, v, forward_batch, save_kv_cache=save_kv_cache)
    from sglang.srt.layers.attention.triton_backend import logit_capping_mod

    global direct_calls
    direct_calls += 1
    plan, heads, head_dim = backend.forward_metadata, attn.tp_q_head_num, attn.qk_head_dim
    output = torch.empty_like(q)
    backend.extend_attention_fwd(
        q.view(-1, heads, head_dim),
        k.view(-1, attn.tp_k_head_num, head_dim),
        v.view(-1, attn.tp_v_head_num, head_dim),
        output.view(-1, heads, head_dim),
        backend.token_to_kv_pool.get_key_buffer(attn.layer_id),
        backend.token_to_kv_pool.get_value_buffer(attn.layer_id),
        plan.qo_indptr,
        plan.kv_indptr,
        plan.kv_indices,
        plan.custom_mask,
        False,  # bidirectional
        plan.mask_indptr,
        plan.max_extend_len,
        1.0,
        1.0,
        attn.scaling,
        logit_cap=logit_capping_mod(attn.logit_capping_method, attn.logit_cap),
        sliding_window_size=-1,
        sinks=None,
        window_kv_offsets=None,
        xai_temperature_len=attn.xai_temperature_len,
        page_size=backend.page_size,
    )
    return output
