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

__all__ = ["append_labels", "append_token"]


@triton.jit
def _round_half_even(y):
    low = tl.floor(y)
    fraction = y - low
    odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
    return low + tl.where((fraction > 0.5) | ((fraction == 0.5) & odd), 1.0, 0.0)


@triton.jit
def _store_labels(x, c, c_ok, base, stride_lx, PACKED: tl.constexpr, WORDS: tl.constexpr):
    """Write one key's labels `x` (R_PAD,) at `base`: packed 4-bit planes or a 16-bit row."""
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
        tl.store(base + c * stride_lx, x.to(base.dtype.element_ty), mask=c_ok)


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
    _store_labels(x, c, c_ok, LAB + b * stride_lb + kv * stride_lh + (start + t) * stride_ln, stride_lx, PACKED,
                  WORDS)


@triton.jit
def _append_token_kernel(KEY, VALUE, KBUF, VBUF, HEAVY, KMAP, LAB, start, stride_kb, stride_kh, stride_vb,
                         stride_vh, stride_cb, stride_ch, stride_cn, stride_db, stride_dh, stride_dn, stride_lb,
                         stride_lh, stride_lx, stride_ln, KVH: tl.constexpr, D: tl.constexpr, R: tl.constexpr,
                         R_PAD: tl.constexpr, PACKED: tl.constexpr, WORDS: tl.constexpr, PROJECT: tl.constexpr):
    row = tl.program_id(0)  # one (sequence, KV head): its new key and value, and the key's labels
    b = (row // KVH).to(tl.int64)
    kv = row % KVH
    d = tl.arange(0, D)
    k = tl.load(KEY + b * stride_kb + kv * stride_kh + d)
    tl.store(KBUF + b * stride_cb + kv * stride_ch + start * stride_cn + d, k)
    tl.store(VBUF + b * stride_db + kv * stride_dh + start * stride_dn + d,
             tl.load(VALUE + b * stride_vb + kv * stride_vh + d))
    c = tl.arange(0, R_PAD)
    c_ok = c < R
    if PROJECT:  # k B: the KV head's map (D, R) float32, summed in float32
        kmap = tl.load(KMAP + kv * D * R + d[:, None] * R + c[None, :], mask=c_ok[None, :], other=0.0)
        x = tl.sum(k.to(tl.float32)[:, None] * kmap, axis=0)
    else:
        channel = tl.load(HEAVY + kv * R + c, mask=c_ok, other=0)
        x = tl.load(KEY + b * stride_kb + kv * stride_kh + channel, mask=c_ok, other=0.0)
    _store_labels(x, c, c_ok, LAB + b * stride_lb + kv * stride_lh + start * stride_ln, stride_lx, PACKED, WORDS)


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
    stride_lx, stride_ln = _label_strides(cache)
    _append_kernel[(b * kvh * count,)](key, heavy, cache, start, key.stride(0), key.stride(1), key.stride(2),
                                       cache.stride(0), cache.stride(1), stride_lx, stride_ln, count, KVH=kvh, R=r,
                                       R_PAD=max(triton.next_power_of_2(r), 2), PACKED=packed,
                                       WORDS=triton.cdiv(r, 8), num_warps=1)


def _label_strides(cache: torch.Tensor) -> tuple[int, int]:
    """(stride between a key's labels, stride between tokens) of either format."""
    return (cache.stride(2), cache.stride(3)) if cache.dtype == torch.int32 else (cache.stride(3), cache.stride(2))


def append_token(keys: torch.Tensor, values: torch.Tensor, labels: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, heavy: torch.Tensor, start: int, key_map: torch.Tensor | None = None) -> None:
    """One launch for a decode step's cache writes: the new `key` / `value` (b, kv_heads, 1, d) at token
    `start` of the buffers `keys` / `values` (b, kv_heads, capacity, d), and the key's labels into `labels`
    (label_cache's format): its `heavy` channels, or with `key_map` (kv_heads, d, r) float32 its projection
    k B (summed in float32, where a matmul may round apart in the last bit)."""
    b, kvh, count, d = key.shape
    if count != 1 or key.stride(-1) != 1 or value.stride(-1) != 1 or d & (d - 1):
        raise ValueError("append_token takes one token of unit-stride, power-of-two channels")
    r = heavy.shape[-1] if key_map is None else key_map.shape[-1]
    heavy = heavy.to(key.device, torch.int32).contiguous()
    kmap = heavy if key_map is None else key_map.to(key.device, torch.float32).contiguous()  # unread when None
    _append_token_kernel[(b * kvh,)](
        key, value, keys, values, heavy, kmap, labels, start, key.stride(0), key.stride(1), value.stride(0),
        value.stride(1), *keys.stride()[:3], *values.stride()[:3], labels.stride(0), labels.stride(1),
        *_label_strides(labels), KVH=kvh, D=d, R=r, R_PAD=max(triton.next_power_of_2(r), 2),
        PACKED=labels.dtype == torch.int32, WORDS=triton.cdiv(r, 8), PROJECT=key_map is not None, num_warps=1)
