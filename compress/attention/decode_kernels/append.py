"""New keys' labels written into a label cache in place, one Triton program per (sequence, KV head, token):
the format of compress.attention.decode_kernels.labels.label_cache (16-bit rows, or packed 4-bit planes with each key's
float16 min and step), in one launch instead of the thirty-odd small PyTorch ops label_cache takes, which
would dominate a decode step's label append under a CUDA graph.

The 4-bit codes are label_codes' (compress.attention.evaluation.sparse): per key, step = (max − min) / 15 (at least
1e-8 / 15), code = round half to even of (x − min) / step with IEEE division, clamped to 0..15.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["append_labels"]


@triton.jit
def _round_half_even(y):
    low = tl.floor(y)
    fraction = y - low
    odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
    return low + tl.where((fraction > 0.5) | ((fraction == 0.5) & odd), 1.0, 0.0)


@triton.jit
def _append_kernel(KEY, HEAVY, LAB, start, stride_kb, stride_kh, stride_kn, stride_lb, stride_lh, stride_lx,
                   stride_ln, COUNT, KVH: tl.constexpr, R: tl.constexpr, R_PAD: tl.constexpr, PACKED: tl.constexpr,
                   WORDS: tl.constexpr):
    row = tl.program_id(0)
    b = (row // (KVH * COUNT)).to(tl.int64)
    kv = (row // COUNT) % KVH
    t = row % COUNT
    c = tl.arange(0, R_PAD)
    c_ok = c < R
    channel = tl.load(HEAVY + kv * R + c, mask=c_ok, other=0)
    x = tl.load(KEY + b * stride_kb + kv * stride_kh + t * stride_kn + channel, mask=c_ok, other=0.0)
    base = LAB + b * stride_lb + kv * stride_lh + (start + t) * stride_ln
    if PACKED:  # planes stride_lx apart: WORDS words of 8 codes, then (min, step) as float16 bits
        x = x.to(tl.float32)
        low = tl.min(tl.where(c_ok, x, float("inf")), axis=0)
        high = tl.max(tl.where(c_ok, x, float("-inf")), axis=0)
        step = tl.math.div_rn(tl.maximum(high - low, 1e-8), 15.0)
        code = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(x - low, step)), 0.0), 15.0).to(tl.int32)
        shifted = tl.where(c_ok, code << (4 * (c % 8)), 0)
        for w in tl.static_range(WORDS):
            word = tl.sum(tl.where((c // 8) == w, shifted, 0), axis=0)  # disjoint bits: the sum is an OR
            tl.store(base + w * stride_lx, word)
        low_bits = low.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        step_bits = step.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        tl.store(base + WORDS * stride_lx, low_bits | (step_bits << 16))
    else:  # one row of R labels in the cache's dtype
        tl.store(base + c * stride_lx, x.to(LAB.dtype.element_ty), mask=c_ok)


def append_labels(cache: torch.Tensor, key: torch.Tensor, heavy: torch.Tensor, start: int) -> None:
    """Write the labels of `key` (b, kv_heads, count, d) at tokens start .. start + count − 1 of `cache`
    (label_cache's format: 16-bit (b, kv_heads, n, r), or 4-bit int32 planes (b, kv_heads, planes, n));
    `heavy` (kv_heads, r) channel indices."""
    b, kvh, count, _ = key.shape
    r = heavy.shape[-1]
    packed = cache.dtype == torch.int32
    if key.stride(-1) != 1:
        raise ValueError("append_labels needs unit-stride key channels")
    heavy = heavy.to(key.device, torch.int32).contiguous()  # no copy when it already is
    stride_lx, stride_ln = (cache.stride(2), cache.stride(3)) if packed else (cache.stride(3), cache.stride(2))
    _append_kernel[(b * kvh * count,)](key, heavy, cache, start, key.stride(0), key.stride(1), key.stride(2),
                                       cache.stride(0), cache.stride(1), stride_lx, stride_ln, count, KVH=kvh, R=r,
                                       R_PAD=max(triton.next_power_of_2(r), 2), PACKED=packed,
                                       WORDS=triton.cdiv(r, 8), num_warps=1)
