"""The fused MeZO pass as one Triton kernel: z made in registers from the counter RNG of `noise`.

Imported only when a CUDA pass runs. `noise.philox4x32` / `noise.normals_from_counters` are the
same definition in torch; the tests hold the two to each other.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def philox(c0, c1, c2, c3, k0, k1, ROUNDS: tl.constexpr):
    for _ in tl.static_range(ROUNDS):
        a0, a2 = c0, c2
        c0 = tl.umulhi(a2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(a0, 0xD2511F53) ^ c3 ^ k1
        c1 = a2 * 0xCD9E8D57
        c3 = a0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def log_sin_cos(u_radius, u_angle, FAST_MATH: tl.constexpr):
    """log(u_radius), sin and cos of 2 pi u_angle: the GPU's fast intrinsics (~1e-6 off libm), or libdevice's."""
    angle = 6.283185307179586 * u_angle
    if FAST_MATH:
        log, sin, cos = libdevice.fast_logf(u_radius), libdevice.fast_sinf(angle), libdevice.fast_cosf(angle)
    else:
        log, sin, cos = tl.log(u_radius), tl.sin(angle), tl.cos(angle)
    return log, sin, cos


@triton.jit
def uniform(x):
    return ((x >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def segment_of(pid, first_block_ptr, SEGMENTS: tl.constexpr, SEARCH_STEPS: tl.constexpr):
    """The segment whose blocks include program ``pid``: binary search in ``first_block[0..SEGMENTS]``."""
    lo = pid * 0
    hi = lo + SEGMENTS
    for _ in tl.static_range(SEARCH_STEPS):
        mid = (lo + hi) // 2
        take = tl.load(first_block_ptr + mid) <= pid
        lo = tl.where(take, mid, lo)
        hi = tl.where(take, hi, mid)
    return lo


@triton.jit
def normals(start, seg, seed_lo, seed_hi, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr):
    """z for elements ``start .. start + BLOCK`` of segment ``seg``: element 4k + lane from counter k."""
    k = start // 4 + tl.arange(0, BLOCK // 4)
    zero = (k * 0).to(tl.uint32)
    x0, x1, x2, x3 = philox(
        k.to(tl.uint32),
        (k >> 32).to(tl.uint32),
        seg.to(tl.uint32) + zero,
        zero,
        seed_lo.to(tl.uint32) + zero,
        seed_hi.to(tl.uint32) + zero,
        ROUNDS,
    )
    log01, sin01, cos01 = log_sin_cos(uniform(x0), uniform(x1), FAST_MATH)
    log23, sin23, cos23 = log_sin_cos(uniform(x2), uniform(x3), FAST_MATH)
    r01 = tl.sqrt_rn(-2.0 * log01)
    r23 = tl.sqrt_rn(-2.0 * log23)
    lanes = tl.join(tl.join(r01 * cos01, r23 * cos23), tl.join(r01 * sin01, r23 * sin23))
    return tl.reshape(lanes, [BLOCK])  # lanes in order cos01, sin01, cos23, sin23


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "scale", "lr", "grad", "weight_decay", "next_lo", "next_hi"])
def zo_pass(
    flat_ptr,  # fp32 masters
    first_block_ptr,  # int32 [segments + 1]: the first program of each segment, then the total
    seg_offset_ptr,
    seg_numel_ptr,
    seg_target_ptr,
    seg_decays_ptr,  # per segment
    seed_lo,
    seed_hi,
    scale,
    lr,
    grad,
    weight_decay,
    next_lo,  # MODE 3: the seed of the perturbation that follows the update
    next_hi,
    MODE: tl.constexpr,  # 0 perturb, 1 restore, 2 update, 3 update then perturb (by ``scale``, next seed)
    TARGET_DTYPE: tl.constexpr,
    SEGMENTS: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,
    BLOCK: tl.constexpr,
    ROUNDS: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    pid = tl.program_id(0)
    seg = segment_of(pid, first_block_ptr, SEGMENTS, SEARCH_STEPS)
    start = (pid - tl.load(first_block_ptr + seg)).to(tl.int64) * BLOCK
    numel = tl.load(seg_numel_ptr + seg)
    master_ptr = flat_ptr + tl.load(seg_offset_ptr + seg)
    target_ptr = tl.load(seg_target_ptr + seg).to(tl.pointer_type(TARGET_DTYPE))
    offs = start + tl.arange(0, BLOCK)
    in_range = offs < numel
    master = tl.load(master_ptr + offs, mask=in_range, other=0.0)
    if MODE == 1:
        tl.store(target_ptr + offs, master.to(TARGET_DTYPE), mask=in_range)
    else:
        z = normals(start, seg, seed_lo, seed_hi, BLOCK, ROUNDS, FAST_MATH)
        if MODE == 0:
            tl.store(target_ptr + offs, (master + scale * z).to(TARGET_DTYPE), mask=in_range)
        else:
            decay = tl.load(seg_decays_ptr + seg) * weight_decay
            master = master - lr * (z * grad + decay * master)
            tl.store(master_ptr + offs, master, mask=in_range)
            if MODE == 2:
                tl.store(target_ptr + offs, master.to(TARGET_DTYPE), mask=in_range)
            else:
                z_next = normals(start, seg, next_lo, next_hi, BLOCK, ROUNDS, FAST_MATH)
                tl.store(target_ptr + offs, (master + scale * z_next).to(TARGET_DTYPE), mask=in_range)
