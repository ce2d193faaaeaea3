"""torch stand-ins for SGLang functions that have only a Triton or CUDA implementation.

A plain CPU runner (``device="cpu"`` without SGLang's Xeon engine) reaches some kernels that
SGLang calls whatever the device: Triton then fails with "0 active drivers", a custom op with
"Could not run ... with arguments from the 'CPU' backend", a name imported only under
``is_cuda()`` with ``NameError``. `install_cpu_ops` replaces each such function by a wrapper that
runs a torch version for CPU tensors and the original for any other device, so a CUDA runner
built later in the same process is unaffected. It is installed once per process (by
`shims.use_cpu_native_layers`, for plain CPU runners) and never undone.

A function is patched where it is looked up: on its own module (callers that import it later
get the wrapper) and in every loaded SGLang module that imported it by name
(``from ... import f`` binds the original there).

What each stand-in fixes (SGLang 0.5.23; each computes what SGLang's kernel computes, which for all
but LongCat-Flash's zero experts is what transformers' eager code does, to float32 rounding):

* ``elementwise._launch_fused_gate_sigmoid_mul``: the shared-expert gate of Qwen2-MoE
  (``out += sigmoid(h @ w) * shared``).
* ``softcap._softcap_logits`` and ``gathered_softcap_logits``: the final logit soft-cap
  (Gemma2): ``cap * tanh(x / cap)``.
* ``minimax_m2.rms_sumsq_serial`` / ``rms_apply_serial``: MiniMax-M2's q/k RMSNorm over all
  heads (Triton, asserting CUDA tensors).
* ``ep_moe_kernels.zero_experts_compute_triton``: LongCat-Flash's identity ("zero") experts; and
  ``moe_forward_native`` (SGLang's torch MoE) when a token names one expert twice, which it
  miscounts (LongCat-Flash sends its zero-expert slots to expert 0).
* ``causal_conv1d_triton.causal_conv1d_fn`` / ``causal_conv1d_update`` (and the names
  ``mamba.py`` binds only on CUDA/NPU/XPU): the depthwise causal conv of short-conv and mamba
  layers (LFM2, LFM2-MoE; FalconH1, GraniteMoeHybrid), with the per-request conv state.
* ``ssd_combined.mamba_chunk_scan_combined`` / ``ssu_dispatch.selective_state_update``: the
  Mamba2 state-space scan (prefill, token by token; decode, one step), with per-request initial and
  final states (FalconH1, GraniteMoeHybrid, Mamba2).
* ``TorchNativeAttnBackend.forward_extend/forward_decode``: learned attention sinks
  (GraniteSWA, GraniteMoeSWA), an extra logit per head in the softmax's denominator as HF
  computes it (``out * sigmoid(logsumexp(scores) - sink)``); on the torch_native backend the
  sink parameter is kept in float32 (SGLang makes it bfloat16 for FA4). The output is also
  returned 2-D as from every other backend (3-D when a model passes q per head: Gemma3n).
* ``triton_utils.fused_moe.fused_moe``: unquantized fused experts called directly by a model
  (Afmoe), which otherwise reaches the CUDA-only ``sglang::inplace_fused_experts`` op.

Not device-dispatched, because they only correct paths that fail on every device (or only run on
CPU) today:

* DeepSeek-style MLA gets an attention-method handler for torch_native (the absorbed MLA path;
  without one it took triton's, which prefills as MHA that torch_native cannot read back from the
  latent cache): DeepseekV2/V3, Glm4MoeLite.
* ``adjust_config_with_unaligned_cpu_tp`` (called for every CPU ModelRunner) keeps the config on a
  TypeError at tp=1, where it pads nothing (Gemma3n, Mamba2).
* the 2-D torch_native output, the float32 sinks, ``moe_forward_native`` with repeated expert ids.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import math
import sys
from typing import Callable

_MARK = "_kit_cpu_op"
_installed: list[str] | None = None


def _first_tensor(args, kwargs):
    import torch

    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _rebind(original, replacement) -> None:
    """Every loaded SGLang module that imported ``original`` by name gets ``replacement``."""
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("sglang"):
            continue
        namespace = getattr(module, "__dict__", {})
        for attribute, value in list(namespace.items()):
            if value is original:
                setattr(module, attribute, replacement)


def _dispatching(original: Callable, cpu_impl: Callable) -> Callable:
    @functools.wraps(original)
    def dispatch(*args, **kwargs):
        tensor = _first_tensor(args, kwargs)
        if tensor is not None and tensor.device.type == "cpu":
            return cpu_impl(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(dispatch, _MARK, True)
    dispatch.__wrapped_original__ = original
    return dispatch


def _patch(module_name: str, name: str, cpu_impl: Callable) -> Callable | None:
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    if getattr(original, _MARK, False):
        return original
    wrapper = _dispatching(original, cpu_impl)
    setattr(module, name, wrapper)
    _rebind(original, wrapper)
    return wrapper


# --- Qwen2-MoE shared-expert gate -------------------------------------------------------------


def _gate_sigmoid_mul(hidden_states, gate_weight, shared_output, output, *, do_add: bool) -> None:
    import torch

    gate = torch.sigmoid(hidden_states.float() @ gate_weight.float()).unsqueeze(-1)
    result = gate * shared_output.float()
    if do_add:
        result = result + output.float()
    output.copy_(result.to(output.dtype))


# --- final logit soft-cap ---------------------------------------------------------------------


def _softcap_logits(full_logits, final_logit_softcapping, output=None):
    import torch

    x = full_logits.float()
    if final_logit_softcapping is not None:
        x = final_logit_softcapping * torch.tanh(x / final_logit_softcapping)
    target = full_logits if output is None else output
    target.copy_(x.to(target.dtype))
    return target


def _gathered_softcap_logits(gathered, final_logit_softcapping, output):
    import torch

    world, num_tokens, shard_width = gathered.shape
    vocab = output.shape[1]
    x = gathered.permute(1, 0, 2).reshape(num_tokens, world * shard_width)[:, :vocab].float()
    output.copy_((final_logit_softcapping * torch.tanh(x / final_logit_softcapping)).to(output.dtype))
    return output


# --- MiniMax-M2's q/k RMSNorm over all heads --------------------------------------------------


def _rms_sumsq_serial(x1, x2):
    import torch

    rows = x1.shape[0]
    sum_sq = torch.zeros((2 * rows + 3) // 4 * 4, dtype=torch.float32, device=x1.device)
    sum_sq[:rows] = x1.float().pow(2).sum(-1)
    sum_sq[rows : 2 * rows] = x2.float().pow(2).sum(-1)
    return sum_sq


def _rms_apply_serial(x1, x2, w1, w2, sum_sq, tp_world=1, eps=1e-5):
    import torch

    rows = x1.shape[0]
    outs = []
    for x, w, sq in ((x1, w1, sum_sq[:rows]), (x2, w2, sum_sq[rows : 2 * rows])):
        inv = torch.rsqrt(sq / x.shape[1] / tp_world + eps).unsqueeze(-1)
        outs.append((x.float() * inv * w.float()).to(x.dtype))
    return tuple(outs)


# --- LongCat-Flash's zero (identity) experts ----------------------------------------------------


def _zero_experts_compute(expert_indices, expert_scales, num_experts, zero_expert_type, hidden_states):
    """Ids >= num_experts are identity experts: their share is ``scale * h``; they are then sent to
    expert 0 with scale 0 for the routed MoE (in place, as the Triton version does)."""
    if zero_expert_type != "identity":
        raise NotImplementedError(f"zero experts of type {zero_expert_type!r}")
    zero = expert_indices >= num_experts
    share = (expert_scales.float() * zero).sum(-1, keepdim=True)
    expert_indices[zero] = 0
    expert_scales[zero] = 0.0
    return (hidden_states.float() * share).to(hidden_states.dtype)


def _install_moe_native_repeated_ids() -> None:
    """SGLang's torch MoE (``moe_forward_native``, the CPU path of Mixtral and most MoE models) counts
    tokens per expert with ``scatter_`` (1 per token, not per slot): a token routed twice to one
    expert (LongCat-Flash sends every zero-expert slot to expert 0) breaks its shapes. With repeated
    ids, the wrapper runs it once per top-k slot and sums (the MoE is linear in the slots)."""
    module = importlib.import_module("sglang.srt.layers.moe.fused_moe_native")
    original = module.moe_forward_native
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def moe_forward_native(layer, x, topk_output, moe_runner_config):
        weights, ids, rest = topk_output[0], topk_output[1], topk_output[2]
        ordered = ids.sort(dim=-1).values
        if ids.shape[-1] < 2 or not bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            return original(layer, x, topk_output, moe_runner_config)
        out = None
        for k in range(ids.shape[-1]):
            part = original(layer, x, (weights[:, k : k + 1], ids[:, k : k + 1], rest), moe_runner_config)
            out = part if out is None else out + part
        return out

    setattr(moe_forward_native, _MARK, True)
    module.moe_forward_native = moe_forward_native
    _rebind(original, moe_forward_native)


# --- causal conv1d ----------------------------------------------------------------------------

_PAD_SLOT_ID = -1


def _activate(x, activation):
    import torch.nn.functional as F

    if activation is True or activation in ("silu", "swish"):
        return F.silu(x)
    if activation in (None, False):
        return x
    raise NotImplementedError(f"causal_conv1d: activation {activation!r}")


def _conv(window, weight, bias):
    """Depthwise conv of ``window`` (dim, width - 1 + n) -> (dim, n), in float32."""
    import torch.nn.functional as F

    dim, width = weight.shape
    out = F.conv1d(window.float().unsqueeze(0), weight.float().unsqueeze(1), None, groups=dim).squeeze(0)
    return out if bias is None else out + bias.float().unsqueeze(-1)


def _causal_conv1d_fn(
    x,
    weight,
    bias=None,
    conv_states=None,
    query_start_loc=None,
    seq_lens_cpu=None,
    cache_indices=None,
    has_initial_state=None,
    activation="silu",
    pad_slot_id=_PAD_SLOT_ID,
    **kwargs,
):
    """x: (dim, total tokens), sequences back to back (``query_start_loc``); each sequence starts
    from its conv state (``conv_states[cache_indices[i]]``) where ``has_initial_state[i]``, and
    leaves its last inputs there. Returns (dim, total tokens)."""
    import torch

    if kwargs.get("block_table") is not None:
        raise NotImplementedError("causal_conv1d_fn: block_table")
    if x.dim() == 3:  # (batch, dim, seqlen): one sequence per row
        return torch.stack(
            [
                _causal_conv1d_fn(
                    row,
                    weight,
                    bias,
                    conv_states,
                    None,
                    None,
                    None if cache_indices is None else cache_indices[i : i + 1],
                    None if has_initial_state is None else has_initial_state[i : i + 1],
                    activation,
                    pad_slot_id,
                )
                for i, row in enumerate(x)
            ]
        )
    dim, width = weight.shape
    starts = [0, x.shape[1]] if query_start_loc is None else [int(s) for s in query_start_loc.tolist()]
    out = torch.zeros_like(x)
    for i in range(len(starts) - 1):
        begin, end = starts[i], starts[i + 1]
        slot = i if cache_indices is None else int(cache_indices[i])
        if slot == pad_slot_id or end <= begin:
            continue
        tokens = x[:, begin:end]
        state_len = conv_states.shape[-1] if conv_states is not None else width - 1
        initial = (
            conv_states[slot].to(x.dtype)
            if conv_states is not None and has_initial_state is not None and bool(has_initial_state[i])
            else x.new_zeros(dim, state_len)
        )
        history = torch.cat([initial, tokens], dim=-1)
        out[:, begin:end] = _activate(_conv(history[:, -(width - 1 + tokens.shape[1]) :], weight, bias), activation).to(
            x.dtype
        )
        if conv_states is not None:
            conv_states[slot].copy_(history[:, -state_len:].to(conv_states.dtype))
    return out


def _causal_conv1d_update(
    x,
    conv_state,
    weight,
    bias=None,
    activation=None,
    cache_seqlens=None,
    conv_state_indices=None,
    *args,
    pad_slot_id=_PAD_SLOT_ID,
    **kwargs,
):
    """x: (batch, dim) or (batch, dim, seqlen), the next tokens of each request; its conv state
    (``conv_state[conv_state_indices[b]]``) is read and shifted. Returns x's shape."""
    import torch

    extra = [v for v in args if v is not None] + [
        v for k, v in kwargs.items() if k not in ("metadata", "validate_data")
    ]
    if cache_seqlens is not None or any(v is not None for v in extra):
        raise NotImplementedError("causal_conv1d_update: circular buffers / speculative decoding")
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    dim, width = weight.shape
    state_len = conv_state.shape[-1]
    out = torch.zeros_like(x3)
    for b in range(x3.shape[0]):
        slot = b if conv_state_indices is None else int(conv_state_indices[b])
        if slot == pad_slot_id:
            continue
        history = torch.cat([conv_state[slot].to(x3.dtype), x3[b]], dim=-1)
        n = x3.shape[-1]
        out[b] = _activate(_conv(history[:, -(width - 1 + n) :], weight, bias), activation).to(x3.dtype)
        conv_state[slot].copy_(history[:, -state_len:].to(conv_state.dtype))
    return out.squeeze(-1) if squeeze else out


# --- attention sinks on the torch_native backend ------------------------------------------------

_SINKS: contextvars.ContextVar = contextvars.ContextVar("kit_attention_sinks", default=None)


def _sdpa_with_sinks(original):
    @functools.wraps(original)
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        sinks = _SINKS.get()
        if sinks is None:
            return original(
                query,
                key,
                value,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
            )
        import torch

        heads, kv_heads = query.shape[-3], key.shape[-3]
        if kv_heads != heads:
            key = key.repeat_interleave(heads // kv_heads, dim=-3)
            value = value.repeat_interleave(heads // kv_heads, dim=-3)
        scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
        scores = (query.float() @ key.float().transpose(-1, -2)) * scale
        q_len, kv_len = scores.shape[-2:]
        if is_causal:
            keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        if attn_mask is not None:
            scores = (
                scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            )
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        out = torch.softmax(scores, dim=-1) @ value.float()
        out = out * torch.sigmoid(lse - sinks.float().view(-1, 1, 1))
        return out.to(query.dtype)

    setattr(sdpa, _MARK, True)
    return sdpa


def _forward_with_sinks(original):
    @functools.wraps(original)
    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, sinks=None, **kwargs):
        token = _SINKS.set(sinks) if sinks is not None else None
        try:
            o = original(self, q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        finally:
            if token is not None:
                _SINKS.reset(token)
        # torch_native's extend returns ``empty_like(q)``: 3-D when a model passes q per head
        # (Gemma3n); every other backend returns (tokens, heads * v_head_dim).
        return o.reshape(o.shape[0], -1) if o.dim() == 3 else o

    setattr(forward, _MARK, True)
    return forward


def _install_attention_sinks() -> None:
    module = importlib.import_module("sglang.srt.layers.attention.torch_native_backend")
    backend = module.TorchNativeAttnBackend
    if getattr(backend.forward_extend, _MARK, False):
        return
    module.scaled_dot_product_attention = _sdpa_with_sinks(module.scaled_dot_product_attention)
    backend.forward_extend = _forward_with_sinks(backend.forward_extend)
    backend.forward_decode = _forward_with_sinks(backend.forward_decode)


def _install_float32_sinks() -> None:
    """Granite's sink parameter is bfloat16 unless the backend is trtllm_mha (granite.py:80); the
    torch_native backend computes in float32, so a float32 checkpoint's sinks stay float32."""
    granite = importlib.import_module("sglang.srt.models.granite")
    original = granite.build_attention_sinks
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def build_attention_sinks(num_heads: int):
        import torch

        sinks = original(num_heads)
        from sglang.srt.runtime_context import get_exec

        if get_exec().kernel.attention_backend == "torch_native" and torch.get_default_dtype() == torch.float32:
            sinks.data = sinks.data.float()
        return sinks

    setattr(build_attention_sinks, _MARK, True)
    granite.build_attention_sinks = build_attention_sinks
    _rebind(original, build_attention_sinks)


# --- fused experts called directly (Afmoe) -----------------------------------------------------


def _fused_moe(hidden_states, w1, w2, topk_output, moe_runner_config=None, b1=None, b2=None, **quant):
    import torch
    import torch.nn.functional as F

    if any(bool(v) for v in quant.values()):
        raise NotImplementedError("fused_moe on CPU: quantized experts")
    config = moe_runner_config
    activation = getattr(config, "activation", "silu")
    if (
        config is not None
        and (
            config.apply_router_weight_on_input
            or config.no_combine
            or not config.is_gated
            or getattr(config, "gemm1_alpha", None) is not None
            or getattr(config, "swiglu_limit", None) is not None
            or getattr(config, "gemm1_clamp_limit", None) is not None
        )
    ) or activation not in ("silu", "gelu"):
        raise NotImplementedError("fused_moe on CPU: only gated silu/gelu experts, combined")
    act = F.silu if activation == "silu" else F.gelu
    topk_weights, topk_ids = topk_output[0], topk_output[1]
    x = hidden_states.float()
    out = torch.zeros_like(x)
    for expert in topk_ids.unique().tolist():
        tokens, slots = (topk_ids == expert).nonzero(as_tuple=True)
        gate_up = x[tokens] @ w1[expert].float().t()
        if b1 is not None:
            gate_up = gate_up + b1[expert].float()
        gate, up = gate_up.chunk(2, dim=-1)
        y = (act(gate) * up) @ w2[expert].float().t()
        if b2 is not None:
            y = y + b2[expert].float()
        out.index_add_(0, tokens, y * topk_weights[tokens, slots].float().unsqueeze(-1))
    scale = getattr(config, "routed_scaling_factor", None)
    if scale is not None:
        out = out * scale
    out = out.to(hidden_states.dtype)
    if config is None or config.inplace:
        hidden_states.copy_(out)
        return hidden_states
    return out


# --- Mamba2 state-space scan (SSD) ---------------------------------------------------------------


def _ssm_step(state, x, dt, A, B, C):
    """One token for every head: ``state`` (H, P, N) float32 <- state * exp(dt A) + dt B x;
    returns (state, y = C . state) with B/C (G, N) shared by H / G heads each."""
    import torch

    heads = x.shape[0]
    B = B.float().repeat_interleave(heads // B.shape[0], dim=0)
    C = C.float().repeat_interleave(heads // C.shape[0], dim=0)
    state = state * torch.exp(dt * A).view(heads, -1, 1) + (
        dt.view(heads, -1, 1) * x.float().unsqueeze(-1)
    ) * B.unsqueeze(1)
    return state, (state * C.unsqueeze(1)).sum(-1)


def _dt(dt, dt_bias, dt_softplus, dt_limit=(0.0, float("inf"))):
    import torch.nn.functional as F

    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _mamba_chunk_scan_combined(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    chunk_indices=None,
    chunk_offsets=None,
    cu_seqlens=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    out=None,
    return_final_states=False,
    return_varlen_states=False,
    return_intermediate_states=False,
    state_dtype=None,
    return_track_states=False,
    track_seq_idx=None,
    track_end_locs=None,
):
    """The SSD scan, token by token (the chunked kernel computes the same recurrence):
    x (1, L, H, P), dt (1, L, H), A (H,), B/C (1, L, G, N), sequences split by ``cu_seqlens``."""
    import torch
    import torch.nn.functional as F

    if return_intermediate_states or track_seq_idx is not None or x.shape[0] != 1:
        raise NotImplementedError("mamba_chunk_scan_combined on CPU: chunk states / state tracking / batch > 1")
    total, heads, head_dim = x.shape[1:]
    bounds = [0, total] if cu_seqlens is None else [int(b) for b in cu_seqlens.tolist()]
    dts = _dt(dt[0], dt_bias, dt_softplus, dt_limit)
    y = torch.empty(total, heads, head_dim, dtype=torch.float32, device=x.device)
    finals = []
    for s in range(len(bounds) - 1):
        if initial_states is not None:
            state = initial_states[s].float()
        else:
            state = torch.zeros(heads, head_dim, B.shape[-1], dtype=torch.float32, device=x.device)
        for t in range(bounds[s], bounds[s + 1]):
            state, y[t] = _ssm_step(state, x[0, t], dts[t].view(heads, 1), A.float().view(heads, 1), B[0, t], C[0, t])
        finals.append(state)
    if D is not None:
        y = y + x[0].float() * (D.float().view(heads, -1) if D.dim() > 0 else D.float())
    if z is not None:
        y = y * F.silu(z[0].float())
    if out is None:
        out = torch.empty_like(x)
    out.view(1, total, heads, head_dim).copy_(y.unsqueeze(0).to(out.dtype))
    varlen = torch.stack(finals).to(state_dtype or x.dtype)
    if return_track_states:
        return None, varlen, None
    if return_varlen_states:
        return (finals[-1].unsqueeze(0).to(varlen.dtype), varlen) if return_final_states else varlen
    return finals[-1].unsqueeze(0).to(varlen.dtype) if return_final_states else None


def _selective_state_update(
    state,
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    state_batch_indices=None,
    pad_slot_id=_PAD_SLOT_ID,
    out=None,
    disable_state_update=False,
    intermediate_states_buffer=None,
    cache_steps=None,
    retrieve_parent_token=None,
    intermediate_state_indices=None,
    **kwargs,
):
    """One decode token per request: x (batch, H, P), dt (batch, H, P), A (H, P, N), B/C
    (batch, G, N), ``state[state_batch_indices[b]]`` (H, P, N) read and advanced."""
    import torch
    import torch.nn.functional as F

    if x.dim() != 3 or intermediate_states_buffer is not None or cache_steps is not None:
        raise NotImplementedError("selective_state_update on CPU: one token per request only")
    dts = _dt(dt, dt_bias, dt_softplus)
    result = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for b in range(x.shape[0]):
        slot = b if state_batch_indices is None else int(state_batch_indices[b])
        if slot == pad_slot_id:
            continue
        heads = x.shape[1]
        B_h = B[b].float().repeat_interleave(heads // B.shape[1], dim=0)
        C_h = C[b].float().repeat_interleave(heads // C.shape[1], dim=0)
        new = state[slot].float() * torch.exp(dts[b].unsqueeze(-1) * A.float())
        new = new + (dts[b] * x[b].float()).unsqueeze(-1) * B_h.unsqueeze(1)
        y = (new * C_h.unsqueeze(1)).sum(-1)
        if D is not None:
            y = y + x[b].float() * D.float()
        if z is not None:
            y = y * F.silu(z[b].float())
        result[b] = y
        if not disable_state_update:
            state[slot].copy_(new.to(state.dtype))
    if out is None:
        return result.to(x.dtype)
    out.copy_(result.to(out.dtype))
    return out


# --- MLA models on the torch_native backend ----------------------------------------------------


def _install_mla_torch_native() -> None:
    """DeepSeek-style MLA picks its attention method per backend; torch_native has no entry and
    gets the triton one, which prefills as MHA (decompressed K/V) while torch_native reads K/V back
    from the latent cache ("batch2 ... [4, 32] but got [4, 48]"). The absorbed MLA path reads the
    latent cache on every step, which is what torch_native does."""
    handler = importlib.import_module("sglang.srt.models.deepseek_common.attention_backend_handler")
    registry = handler.AttentionBackendRegistry
    if "torch_native" not in registry._handlers:
        registry.register("torch_native", handler._dispatch_mla_subtype)


# --- CPU TP padding at tp=1 ----------------------------------------------------------------------


def _install_unaligned_tp_at_tp1() -> None:
    """A CPU ModelRunner always calls ``adjust_config_with_unaligned_cpu_tp`` (pads heads and
    intermediate sizes to the TP size): at tp=1 it pads nothing, but it does ``%`` on whatever the
    config holds and raises for attention-free models (Mamba2: no num_attention_heads) and per-layer
    lists (Gemma3n's intermediate_size). At tp=1 such a TypeError leaves the config as it is."""
    runner = importlib.import_module("sglang.srt.model_executor.model_runner")
    original = runner.adjust_config_with_unaligned_cpu_tp
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def adjust(model_config, load_config, tp_size):
        try:
            return original(model_config, load_config, tp_size)
        except TypeError:
            if tp_size != 1:
                raise
            return model_config

    setattr(adjust, _MARK, True)
    runner.adjust_config_with_unaligned_cpu_tp = adjust


# --- installation ------------------------------------------------------------------------------


def _install_causal_conv1d() -> None:
    triton_module = "sglang.kernels.ops.mamba.causal_conv1d_triton"
    conv_fn = _patch(triton_module, "causal_conv1d_fn", _causal_conv1d_fn)
    conv_update = _patch(triton_module, "causal_conv1d_update", _causal_conv1d_update)
    # mamba.py binds these names only on CUDA/NPU/XPU (NameError elsewhere): give it the wrappers.
    try:
        mamba = importlib.import_module("sglang.srt.layers.attention.mamba.mamba")
    except ImportError:
        return
    for name, fn in (
        ("causal_conv1d_fn", conv_fn),
        ("causal_conv1d_fn_triton", conv_fn),
        ("causal_conv1d_update", conv_update),
        ("causal_conv1d_update_triton", conv_update),
    ):
        if name not in vars(mamba):
            setattr(mamba, name, fn)


_TARGETS: tuple[tuple[str, Callable[[], object]], ...] = (
    (
        "elementwise._launch_fused_gate_sigmoid_mul",
        lambda: _patch(
            "sglang.kernels.ops.elementwise.elementwise", "_launch_fused_gate_sigmoid_mul", _gate_sigmoid_mul
        ),
    ),
    (
        "softcap._softcap_logits",
        lambda: _patch("sglang.kernels.ops.activation.softcap", "_softcap_logits", _softcap_logits),
    ),
    (
        "softcap.gathered_softcap_logits",
        lambda: _patch("sglang.kernels.ops.activation.softcap", "gathered_softcap_logits", _gathered_softcap_logits),
    ),
    ("causal_conv1d", _install_causal_conv1d),
    ("moe_forward_native with repeated expert ids", _install_moe_native_repeated_ids),
    (
        "zero_experts_compute_triton",
        lambda: _patch("sglang.kernels.ops.moe.ep_moe_kernels", "zero_experts_compute_triton", _zero_experts_compute),
    ),
    (
        "minimax_m2.rms_sumsq_serial",
        lambda: _patch("sglang.srt.models.minimax_m2", "rms_sumsq_serial", _rms_sumsq_serial),
    ),
    (
        "minimax_m2.rms_apply_serial",
        lambda: _patch("sglang.srt.models.minimax_m2", "rms_apply_serial", _rms_apply_serial),
    ),
    ("torch_native attention sinks", _install_attention_sinks),
    ("granite float32 sinks", _install_float32_sinks),
    ("MLA on torch_native", _install_mla_torch_native),
    ("unaligned CPU TP at tp=1", _install_unaligned_tp_at_tp1),
    (
        "mamba_chunk_scan_combined",
        lambda: _patch(
            "sglang.kernels.ops.mamba.triton_ops.ssd_combined", "mamba_chunk_scan_combined", _mamba_chunk_scan_combined
        ),
    ),
    (
        "selective_state_update",
        lambda: _patch(
            "sglang.kernels.ops.mamba.triton_ops.ssu_dispatch", "selective_state_update", _selective_state_update
        ),
    ),
    (
        "fused_moe",
        lambda: _patch("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe", "fused_moe", _fused_moe),
    ),
)


def install_cpu_ops() -> list[str]:
    """Install every stand-in this SGLang has a target for (once per process); returns their names.
    A target this SGLang lacks (renamed, moved) is skipped: the model that needs it fails as before."""
    global _installed
    if _installed is not None:
        return list(_installed)
    done = []
    for name, install in _TARGETS:
        try:
            install()
        except (ImportError, AttributeError):
            continue
        done.append(name)
    _installed = done
    return list(done)
