"""MeZO's z as a pure function of (step seed, parameter index, element offset), and the fused passes.

z is never stored: every pass regenerates it. `torch.Generator` streams depend on how they are
drawn (tensor by tensor, on which device), so z here comes from a counter-based generator
instead: Philox4x32-10 (Salmon et al. 2011, as in cuRAND and Triton) keyed by the step seed,
with the counter ``(k mod 2**32, k div 2**32, parameter index, 0)`` for the k-th group of four
elements, whose four 32-bit outputs become four normals by Box-Muller. The same element gets the
same z whatever the launch shape, the chunking, the device or the model's layout.

Two implementations of that one definition:

- `TritonPasses` (CUDA): one kernel launch per pass over every trainable tensor (a table of
  pointers), reading the fp32 masters and writing the model's tensors, with z made in registers.
- `TorchPasses` (any device; the CPU's and the reference twin): the same integer arithmetic on
  int64 tensors. The integers are bitwise equal on both; the normals agree to float rounding
  (log/sin/cos differ by an ulp or so between devices).

Under tensor parallelism a rank holds a part of some parameters (`Shard`: rows or columns of
the full one); `ShardedTorchPasses` gives each of its elements the z TP=1 gives that element
(same parameter index, the element's offset in the full parameter), so a TP=N run moves the
weights as the TP=1 run does.

A pass is one of: perturb (model <- master + scale z), restore (model <- master) or update
(master <- master - lr (g z + wd master); model <- master), the update also being the restore
after a step's last perturbation.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
SEGMENT_ALIGN = 16  # elements: every parameter's segment of the flat masters starts 64-byte aligned
TWO_PI = 6.283185307179586


# ---------------------------------------------------------------------------------------------
# The definition, in torch (int64 tensors holding uint32 values)


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a * m, exactly, without 64-bit overflow (m split in 16-bit halves)."""
    t_lo = a * (m & 0xFFFF)  # < 2**48
    t_hi = a * (m >> 16)  # < 2**48
    mid = t_lo + ((t_hi & 0xFFFF) << 16)
    return (t_hi >> 16) + (mid >> 32), mid & MASK32


def philox4x32(counter: Sequence[torch.Tensor], seed: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of int64 tensors holding uint32 counter words; key = the seed's two 32-bit halves."""
    c0, c1, c2, c3 = counter
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _uniform(x: torch.Tensor) -> torch.Tensor:
    # (2 m + 1) / 2**24 with m the top 23 bits: exactly representable, strictly inside (0, 1).
    return ((x >> 9) * 2 + 1).to(torch.float32) * (2.0**-24)


def normals_from_counters(k: torch.Tensor, param_index: torch.Tensor | int, seed: int) -> torch.Tensor:
    """z for counters ``k`` (int64) of ``param_index``: shape ``[*k.shape, 4]``, element 4k + lane."""
    index = param_index if isinstance(param_index, torch.Tensor) else torch.full_like(k, param_index)
    x0, x1, x2, x3 = philox4x32((k & MASK32, k >> 32, index, torch.zeros_like(k)), seed)
    u0, u1, u2, u3 = (_uniform(x) for x in (x0, x1, x2, x3))
    r01, r23 = torch.sqrt(-2.0 * torch.log(u0)), torch.sqrt(-2.0 * torch.log(u2))
    t01, t23 = TWO_PI * u1, TWO_PI * u3
    return torch.stack([r01 * torch.cos(t01), r01 * torch.sin(t01), r23 * torch.cos(t23), r23 * torch.sin(t23)], -1)


def standard_normal(seed: int, param_index: int, numel: int, device="cpu", start: int = 0) -> torch.Tensor:
    """Elements ``[start, start + numel)`` of one parameter's z (``start`` a multiple of 4), in torch."""
    assert start % 4 == 0
    k = torch.arange(start // 4, (start + numel + 3) // 4, device=device, dtype=torch.int64)
    return normals_from_counters(k, param_index, seed).reshape(-1)[:numel]


def normals_at(seed: int, param_index: int, starts: torch.Tensor, length: int, aligned: bool = False) -> torch.Tensor:
    """z of one parameter at full offsets ``starts[i] + j`` for ``j < length``: shape ``[len(starts), length]``.

    Each run starts anywhere (the counter of offset o is o // 4, its lane o % 4); ``aligned``
    says every start is a multiple of 4, which saves one counter per run.
    """
    count = (length + 3) // 4 + (0 if aligned else 1)
    k = (starts >> 2).unsqueeze(1) + torch.arange(count, device=starts.device, dtype=torch.int64)
    normals = normals_from_counters(k, param_index, seed).reshape(len(starts), 4 * count)
    if aligned:
        return normals[:, :length]
    lanes = (starts & 3).unsqueeze(1) + torch.arange(length, device=starts.device, dtype=torch.int64)
    return normals.gather(1, lanes)


# ---------------------------------------------------------------------------------------------
# Under tensor parallelism: a rank's part of a parameter, and its z


@dataclass(frozen=True)
class Shard:
    """Where a rank's part of a parameter sits in the full (TP=1) parameter: along ``dim``, the
    ``length`` rows (dim 0) or columns (dim 1) from ``start``. The part is stored contiguous, of
    `local_shape`; its z is the full parameter's z at the offsets the part's elements have there."""

    shape: tuple[int, ...]  # the full parameter's
    dim: int
    start: int
    length: int

    def __post_init__(self):
        if (
            not 0 <= self.dim < len(self.shape)
            or not 0 <= self.start <= self.start + self.length <= self.shape[self.dim]
        ):
            raise ValueError(
                f"a shard of {self.length} from {self.start} along dim {self.dim} does not fit in {self.shape}"
            )

    @property
    def local_shape(self) -> tuple[int, ...]:
        return self.shape[: self.dim] + (self.length,) + self.shape[self.dim + 1 :]

    @property
    def numel(self) -> int:
        return math.prod(self.local_shape)

    def runs(self) -> tuple[int, int, int, int]:
        """The part as contiguous runs of the full parameter: (count, length, first offset, stride).

        Run i holds full offsets ``first + i * stride + [0, length)`` and is local elements
        ``[i * length, (i + 1) * length)``: one run for a rows shard, one per row for a columns shard.
        """
        inner = math.prod(self.shape[self.dim + 1 :])
        return math.prod(self.shape[: self.dim]), self.length * inner, self.start * inner, self.shape[self.dim] * inner

    def of(self, full: torch.Tensor) -> torch.Tensor:
        """This part of a full-shaped tensor (a view)."""
        return full.narrow(self.dim, self.start, self.length)


def z_pieces(seed: int, param_index: int, numel: int, shard: Shard | None, device, chunk: int = 1 << 18):
    """One parameter's z (or its shard's), in pieces of about ``4 * chunk`` elements:
    yields ``(local start, z of local elements [start, start + len(z)))`` in local order."""
    count, length, first, stride = (1, numel, 0, numel) if shard is None else shard.runs()
    if count == 0 or length == 0:
        return
    aligned = first % 4 == 0 and (count == 1 or stride % 4 == 0)
    budget = 4 * chunk
    if length >= budget:  # long runs (a whole parameter, a rows shard): pieces of one run
        for run in range(count):
            for offset in range(0, length, budget):
                starts = torch.tensor([first + run * stride + offset], device=device, dtype=torch.int64)
                yield (
                    run * length + offset,
                    normals_at(seed, param_index, starts, min(budget, length - offset), aligned).reshape(-1),
                )
    else:  # short runs (a columns shard's rows): many runs a piece
        per_piece = max(1, budget // length)
        for run in range(0, count, per_piece):
            runs = torch.arange(run, min(count, run + per_piece), device=device, dtype=torch.int64)
            yield run * length, normals_at(seed, param_index, first + runs * stride, length, aligned).reshape(-1)


def shard_normal(seed: int, param_index: int, shard: Shard, device="cpu", chunk: int = 1 << 18) -> torch.Tensor:
    """A shard's z, of the shard's local shape: the full parameter's z at the shard's elements."""
    out = torch.empty(shard.numel, device=device)
    for start, z in z_pieces(seed, param_index, shard.numel, shard, device, chunk):
        out[start : start + len(z)] = z
    return out.view(shard.local_shape)


# ---------------------------------------------------------------------------------------------
# The flat fp32 masters and what a pass needs to know about each trainable tensor


@dataclass(frozen=True)
class Segment:
    """Where one trainable tensor's master lives in the flat buffer; its position in the layout is
    the parameter index that goes into z's counter."""

    offset: int  # first element in the flat masters
    numel: int
    decays: bool  # weight decay applies (not to biases and norms)


def layout(numels: Sequence[int], decays: Sequence[bool]) -> tuple[list[Segment], int]:
    """Segments in canonical order, each starting on a `SEGMENT_ALIGN` boundary; and the total length."""
    segments, offset = [], 0
    for numel, decay in zip(numels, decays, strict=True):
        segments.append(Segment(offset, numel, decay))
        offset += -(-numel // SEGMENT_ALIGN) * SEGMENT_ALIGN
    return segments, offset


class TorchPasses:
    """The passes in plain torch over the whole flat buffer (z made ``chunk`` counters at a time)."""

    name = "torch"

    def __init__(
        self, flat: torch.Tensor, segments: Sequence[Segment], targets: Sequence[torch.Tensor], chunk: int = 1 << 20
    ):
        self.flat, self.segments, self.targets, self.chunk = flat, list(segments), list(targets), chunk
        # Counter and parameter index of every group of four flat elements (segments are 4-aligned).
        ends = [s.offset for s in self.segments[1:]] + [flat.numel()]
        groups = [(end - s.offset) // 4 for s, end in zip(self.segments, ends)]
        device = flat.device
        self.counters = torch.cat([torch.arange(n, dtype=torch.int64, device=device) for n in groups])
        self.indices = torch.cat(
            [torch.full((n,), index, dtype=torch.int64, device=device) for index, n in enumerate(groups)]
        )
        self.decays = torch.cat(
            [torch.full((4 * n,), float(s.decays), device=device) for s, n in zip(self.segments, groups)]
        )

    def z(self, seed: int) -> torch.Tensor:
        """z over the flat layout (padding included)."""
        out = torch.empty_like(self.flat)
        for start in range(0, len(self.counters), self.chunk):
            stop = min(start + self.chunk, len(self.counters))
            normals = normals_from_counters(self.counters[start:stop], self.indices[start:stop], seed)
            out[4 * start : 4 * stop] = normals.reshape(-1)
        return out

    def _write(self, source: torch.Tensor) -> None:
        for seg, target in zip(self.segments, self.targets):
            target.view(-1).copy_(source[seg.offset : seg.offset + seg.numel])

    def perturb(self, seed: int, scale: float) -> None:
        self._write(self.flat + scale * self.z(seed))

    def restore(self) -> None:
        self._write(self.flat)

    def update(self, seed: int, lr: float, grad: float, weight_decay: float = 0.0) -> None:
        step = self.z(seed) * grad
        if weight_decay:
            step += weight_decay * self.decays * self.flat
        self.flat.sub_(lr * step)
        self._write(self.flat)

    def update_and_perturb(self, seed: int, lr: float, grad: float, weight_decay: float, next_seed: int, scale: float):
        """`update`, then `perturb` by the next step's z: the result of the two (one pass on CUDA)."""
        self.update(seed, lr, grad, weight_decay)
        self.perturb(next_seed, scale)


class ShardedTorchPasses:
    """The torch passes where some views are shards of TP-sharded parameters (see `Shard`).

    Every element gets the z that TP=1 gives it: the parameter index is the view's position
    (the HF order, the same on every rank) and the offset is the element's offset in the full
    parameter; a whole (replicated) parameter gets its full z, the same on every rank. z is made
    ``chunk`` counters at a time and written piece by piece: no flat-sized temporaries. The
    arithmetic is `TorchPasses`'s, element for element.
    """

    name = "torch"

    def __init__(
        self,
        flat,
        segments: Sequence[Segment],
        targets: Sequence[torch.Tensor],
        shards: Sequence[Shard | None],
        chunk: int = 1 << 18,
    ):
        self.flat, self.segments, self.targets, self.shards, self.chunk = (
            flat,
            list(segments),
            list(targets),
            list(shards),
            chunk,
        )
        for seg, target, shard in zip(self.segments, self.targets, self.shards, strict=True):
            if shard is not None and (tuple(target.shape) != shard.local_shape or seg.numel != shard.numel):
                raise ValueError(f"a view of shape {tuple(target.shape)} is not its shard's {shard.local_shape}")

    def _pieces(self, seed: int):
        """(segment, flat range, model piece, z) for every piece of every view, in layout order."""
        for index, (seg, target, shard) in enumerate(zip(self.segments, self.targets, self.shards)):
            model = target.view(-1)
            for start, z in z_pieces(seed, index, seg.numel, shard, self.flat.device, self.chunk):
                yield seg, slice(seg.offset + start, seg.offset + start + len(z)), model[start : start + len(z)], z

    def z(self, seed: int) -> torch.Tensor:
        """z over the flat layout (padding zero)."""
        out = torch.zeros_like(self.flat)
        for _, where, _, z in self._pieces(seed):
            out[where] = z
        return out

    def perturb(self, seed: int, scale: float) -> None:
        for _, where, model, z in self._pieces(seed):
            model.copy_(self.flat[where] + scale * z)

    def restore(self) -> None:
        for seg, target in zip(self.segments, self.targets):
            target.view(-1).copy_(self.flat[seg.offset : seg.offset + seg.numel])

    def update(self, seed: int, lr: float, grad: float, weight_decay: float = 0.0) -> None:
        for seg, where, model, z in self._pieces(seed):
            master = self.flat[where]
            step = z * grad
            if weight_decay:
                step += (weight_decay * float(seg.decays)) * master
            master.sub_(lr * step)
            model.copy_(master)

    update_and_perturb = TorchPasses.update_and_perturb


# ---------------------------------------------------------------------------------------------
# The same passes as one Triton kernel launch each (CUDA)

_TRITON_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class TritonPasses:
    """One launch per pass over every trainable tensor; the targets may live anywhere (pointer table)."""

    name = "triton"

    def __init__(
        self, flat: torch.Tensor, segments: Sequence[Segment], targets: Sequence[torch.Tensor], block: int = 2048
    ):
        import triton.language as tl

        dtypes = {t.dtype for t in targets}
        if len(dtypes) != 1 or not all(t.is_contiguous() for t in targets):
            raise ValueError(f"fused MeZO passes need contiguous targets of one dtype (got {sorted(map(str, dtypes))})")
        self.flat, self.block = flat, block
        self.targets = list(targets)  # keeps the pointed-to storage alive
        self.target_dtype = getattr(tl, _TRITON_DTYPES[next(iter(dtypes))])
        device = flat.device
        per_segment = [-(-s.numel // block) for s in segments]
        first_block = [0, *itertools.accumulate(per_segment)]
        self.blocks, self.search_steps = first_block[-1], max(1, (len(segments)).bit_length())
        as_tensor = lambda values, dtype: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
        self.first_block = as_tensor(first_block, torch.int32)
        self.seg_offset = as_tensor([s.offset for s in segments], torch.int64)
        self.seg_numel = as_tensor([s.numel for s in segments], torch.int64)
        self.seg_target = as_tensor([t.data_ptr() for t in targets], torch.int64)
        self.seg_decays = as_tensor([float(s.decays) for s in segments], torch.float32)

    def _launch(
        self,
        mode: int,
        seed: int = 0,
        scale: float = 0.0,
        lr: float = 0.0,
        grad: float = 0.0,
        weight_decay: float = 0.0,
        next_seed: int = 0,
    ) -> None:
        from .triton_kernels import zo_pass

        zo_pass[(self.blocks,)](
            self.flat,
            self.first_block,
            self.seg_offset,
            self.seg_numel,
            self.seg_target,
            self.seg_decays,
            seed & MASK32,
            (seed >> 32) & MASK32,
            float(scale),
            float(lr),
            float(grad),
            float(weight_decay),
            next_seed & MASK32,
            (next_seed >> 32) & MASK32,
            MODE=mode,
            TARGET_DTYPE=self.target_dtype,
            SEGMENTS=len(self.seg_numel),
            SEARCH_STEPS=self.search_steps,
            BLOCK=self.block,
            ROUNDS=PHILOX_ROUNDS,
            FAST_MATH=os.environ.get("TRITON_INTERPRET") != "1",
        )

    def perturb(self, seed: int, scale: float) -> None:
        self._launch(0, seed, scale=scale)

    def restore(self) -> None:
        self._launch(1)

    def update(self, seed: int, lr: float, grad: float, weight_decay: float = 0.0) -> None:
        self._launch(2, seed, lr=lr, grad=grad, weight_decay=weight_decay)

    def update_and_perturb(self, seed: int, lr: float, grad: float, weight_decay: float, next_seed: int, scale: float):
        """One pass: the update's masters (bitwise `update`'s), and the model at them + scale * next z."""
        self._launch(3, seed, scale=scale, lr=lr, grad=grad, weight_decay=weight_decay, next_seed=next_seed)


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def make_passes(
    flat: torch.Tensor, segments, targets, kernel: str = "auto", shards: Sequence[Shard | None] | None = None
):
    """``kernel``: "triton" (CUDA), "torch" (anywhere), or "auto" (Triton where it can run).

    With a sharded view among ``shards`` (TP > 1) the passes are `ShardedTorchPasses`: the Triton
    kernel knows whole parameters only, so "auto" takes torch there and "triton" is refused.
    """
    if kernel not in ("auto", "triton", "torch"):
        raise ValueError(f"kernel must be 'auto', 'triton' or 'torch', not {kernel!r}")
    if shards is not None and any(s is not None for s in shards):
        if kernel == "triton":
            raise ValueError(
                "the Triton passes handle whole parameters only (TP=1): sharded views need kernel='auto' or 'torch'"
            )
        return ShardedTorchPasses(flat, segments, targets, shards)
    if kernel == "triton" or (kernel == "auto" and triton_available(flat.device)):
        return TritonPasses(flat, segments, targets)
    return TorchPasses(flat, segments, targets)
