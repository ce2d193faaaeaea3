"""``LayerNorm(x + residual)`` in one pass over the activations (Triton on CUDA, torch elsewhere).

BERT-style layers end in an add and a LayerNorm: two kernels, three reads and two writes of the
hidden states. One Triton program per row reads both inputs once and writes the result once.
The sum is rounded to the model dtype before the statistics, as the unfused add would leave it,
and the statistics are fp32, as torch's LayerNorm kernel keeps them; the result matches the
unfused ops to the model dtype's rounding. Off CUDA, or for a shape the kernel does not take,
it is the unfused torch expression itself.
"""

from __future__ import annotations

import torch
from torch import nn

_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit
        def add_layer_norm_kernel(x_ptr, residual_ptr, weight_ptr, bias_ptr, out_ptr, width, eps, BLOCK: tl.constexpr):
            row = tl.program_id(0).to(tl.int64)
            cols = tl.arange(0, BLOCK)
            inside = cols < width
            x = tl.load(x_ptr + row * width + cols, mask=inside, other=0.0)
            r = tl.load(residual_ptr + row * width + cols, mask=inside, other=0.0)
            summed = (x + r).to(x.dtype).to(tl.float32)  # the add's rounding, then fp32 statistics
            mean = tl.sum(summed, axis=0) / width
            centered = tl.where(inside, summed - mean, 0.0)
            rstd = 1.0 / tl.sqrt_rn(tl.sum(centered * centered, axis=0) / width + eps)
            w = tl.load(weight_ptr + cols, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * width + cols, (centered * rstd * w + b).to(x.dtype), mask=inside)

        _KERNEL = add_layer_norm_kernel
    return _KERNEL


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x + residual)``; fused where it can be."""
    width = x.shape[-1]
    fusable = (
        x.is_cuda
        and x.is_contiguous()
        and residual.is_contiguous()
        and x.dtype == residual.dtype
        and norm.elementwise_affine
        and norm.bias is not None
        and width <= 8192
    )
    if not fusable:
        return norm(x + residual)
    import triton

    out = torch.empty_like(x)
    rows = x.numel() // width
    block = triton.next_power_of_2(width)
    _kernel()[(rows,)](
        x, residual, norm.weight, norm.bias, out, width, norm.eps, BLOCK=block, num_warps=min(max(block // 256, 1), 8)
    )
    return out
