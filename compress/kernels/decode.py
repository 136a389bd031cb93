"""Triton kernels for skinny products (decode, M ≤ 64 tokens) that read the compressed N:M weight directly.

Decode is memory-bound: time is the bytes of the weight. Both kernels read only the kept values and their
metadata (2:4 fp16: 56.25% of the dense bytes), rebuild a dense weight tile in registers and multiply it on
the tensor cores with the few activation rows:

  nm_mm        any N:M with M a power of 2 ≤ 16, straight from the stored bit mask (nm_format): the slot of
               a kept column inside its group is the number of kept columns before it (a cumulative sum).
  nm24_mm      2:4 only, from `nibbles_24`: per group of 4 one nibble (i0 | i1 << 2), the two kept positions,
               so the values load as a contiguous tile and the rebuild is two compares per position.

An optional input permutation (`perm`: the weight is stored as W[:, perm]) is applied while loading x.
Importing this module needs Triton (GPU machines); nothing else in the package imports it eagerly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["nm_mm", "nm24_mm", "nibbles_24"]


# Launch settings (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages); `config_for` picks from measured
# sweeps on the H200 (benchmarks/decode_sweep.py). Setting OVERRIDE forces one (used by the sweep).
OVERRIDE: dict | None = None


def config_for(kernel, tokens: int, out_features: int, in_features: int) -> dict:
    if OVERRIDE is not None:
        return OVERRIDE
    if kernel is _nm24_gemv_kernel:  # best or within 3% of best for 1 token on 7B/70B shapes
        return {"BLOCK_N": 4 if out_features > 8192 else 8, "BLOCK_K": 1024, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 4, "num_warps": 4, "num_stages": 3}


def _tokens_bucket(m: int) -> int:
    return max(16, triton.next_power_of_2(m))


@triton.jit
def _load_x(x_ptr, perm_ptr, rm, rk, M, K, stride_xm, HAS_PERM: tl.constexpr):
    """(BLOCK_K, BLOCK_M) tile of xᵀ, gathered through the permutation when there is one."""
    k_ok = rk < K
    cols = tl.load(perm_ptr + rk, mask=k_ok, other=0) if HAS_PERM else rk
    return tl.load(x_ptr + rm[None, :] * stride_xm + cols[:, None], mask=(rm[None, :] < M) & k_ok[:, None], other=0.0)


@triton.jit
def _store(out_ptr, acc, rn, rm, M, N, stride_om, SPLIT_K: tl.constexpr):
    ptrs = out_ptr + rm[None, :] * stride_om + rn[:, None]
    ok = (rn[:, None] < N) & (rm[None, :] < M)
    if SPLIT_K == 1:
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=ok)
    else:
        tl.atomic_add(ptrs, acc, mask=ok, sem="relaxed")


@triton.jit
def _nm_bitmask_kernel(x_ptr, values_ptr, mask_ptr, perm_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                       KEEP: tl.constexpr, GROUP: tl.constexpr, HAS_PERM: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    n_ok = rn < N
    row_values = K // GROUP * KEEP
    row_bytes = tl.cdiv(K, 8)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        rb = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        packed = tl.load(mask_ptr + rn[:, None] * row_bytes + rb[None, :], mask=n_ok[:, None] & (rb[None, :] < row_bytes), other=0)
        bits = (packed.to(tl.int32)[:, :, None] >> tl.arange(0, 8)[None, None, :]) & 1
        bits = tl.reshape(bits, (BLOCK_N, BLOCK_K // GROUP, GROUP))
        slot = tl.cumsum(bits, 2) - bits
        groups = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        col = groups[None, :, None] * KEEP + slot
        w = tl.load(values_ptr + rn[:, None, None] * row_values + col, mask=(bits != 0) & n_ok[:, None, None], other=0.0)
        w = tl.reshape(w, (BLOCK_N, BLOCK_K))
        xt = _load_x(x_ptr, perm_ptr, rm, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm, HAS_PERM)
        acc += tl.dot(w, xt)
    _store(out_ptr, acc, rn, rm, M, N, stride_om, SPLIT_K)


@triton.jit
def _nm24_kernel(x_ptr, values_ptr, nib_ptr, perm_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                 HAS_PERM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr):
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    n_ok = rn[:, None] < N
    half, eighth = K // 2, K // 8
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        rv = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        vals = tl.load(values_ptr + rn[:, None] * half + rv[None, :], mask=n_ok & (rv[None, :] < half), other=0.0)
        rb = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        packed = tl.load(nib_ptr + rn[:, None] * eighth + rb[None, :], mask=n_ok & (rb[None, :] < eighth), other=0)
        nib = (packed.to(tl.int32)[:, :, None] >> tl.arange(0, 2)[None, None, :] * 4) & 15
        nib = tl.reshape(nib, (BLOCK_N, BLOCK_K // 4))
        v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, BLOCK_K // 4, 2)))
        position = tl.arange(0, 4)[None, None, :]
        w = (tl.where((nib & 3)[:, :, None] == position, v0[:, :, None], 0.0)
             + tl.where((nib >> 2)[:, :, None] == position, v1[:, :, None], 0.0))
        w = tl.reshape(w.to(vals.dtype), (BLOCK_N, BLOCK_K))
        xt = _load_x(x_ptr, perm_ptr, rm, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm, HAS_PERM)
        acc += tl.dot(w, xt)
    _store(out_ptr, acc, rn, rm, M, N, stride_om, SPLIT_K)


@triton.jit
def _nm24_gemv_kernel(x_ptr, values_ptr, nib_ptr, perm_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                      HAS_PERM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SPLIT_K: tl.constexpr):
    """CUDA-core variant for a few tokens: no dense tile, each kept value meets x[its column] (an L1 gather)."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    n_ok = rn[:, None] < N
    half, eighth = K // 2, K // 8
    j = tl.arange(0, BLOCK_K // 2)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        rv = k0 // 2 + j
        ok = n_ok & (rv[None, :] < half)
        vals = tl.load(values_ptr + rn[:, None] * half + rv[None, :], mask=ok, other=0.0).to(tl.float32)
        rb = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        packed = tl.load(nib_ptr + rn[:, None] * eighth + rb[None, :], mask=n_ok & (rb[None, :] < eighth), other=0)
        index = (packed.to(tl.int32)[:, :, None] >> (tl.arange(0, 4) * 2)[None, None, :]) & 3
        cols = k0 + (j // 2 * 4)[None, :] + tl.reshape(index, (BLOCK_N, BLOCK_K // 2))
        if HAS_PERM:
            cols = tl.load(perm_ptr + cols, mask=ok, other=0)
        for t in tl.static_range(BLOCK_M):
            xv = tl.load(x_ptr + t * stride_xm + cols, mask=ok & (t < M), other=0.0).to(tl.float32)
            part = tl.sum(vals * xv, axis=1)
            acc += tl.where(rm[None, :] == t, part[:, None], 0.0)
    _store(out_ptr, acc, rn, rm, M, N, stride_om, SPLIT_K)


def nibbles_24(mask: torch.Tensor, in_features: int) -> torch.Tensor:
    """Per group of 4 the two kept positions as one nibble (i0 | i1 << 2), two groups per byte.

    `mask` is nm_format's packed bit mask of a 2:4 weight (exactly 2 bits per group, as pack_nm writes)."""
    rows = mask.shape[0]
    bits = mask.to(torch.int32).unsqueeze(-1).bitwise_right_shift(torch.arange(8, device=mask.device)) & 1
    groups = bits.reshape(rows, -1, 4)[:, : in_features // 4]
    order = torch.argsort(groups * -10 + torch.arange(4, device=mask.device), dim=-1, stable=True)[..., :2]
    first, second = order.sort(-1).values.unbind(-1)
    nibble = first | (second << 2)
    return (nibble[:, 0::2] | (nibble[:, 1::2] << 4)).to(torch.uint8).contiguous()


def _launch(kernel, x: torch.Tensor, out_features: int, in_features: int, *tensors, perm=None, block_m=None, **consts):
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    tokens = x2.shape[0]
    if tokens > 64:
        raise ValueError(f"the decode kernels take at most 64 tokens, got {tokens}")
    config = config_for(kernel, tokens, out_features, in_features)
    split = config["SPLIT_K"] > 1
    # split-K partial sums meet in a zeroed float32 buffer; otherwise the kernel writes x's dtype directly
    out = (torch.zeros if split else torch.empty)(tokens, out_features, device=x.device,
                                                  dtype=torch.float32 if split else x.dtype)
    perm_arg = perm if perm is not None else x2  # unused pointer when HAS_PERM is False
    grid = (triton.cdiv(out_features, config["BLOCK_N"]), config["SPLIT_K"])
    kernel[grid](x2, *tensors, perm_arg, out, tokens, out_features, in_features, x2.stride(0), out.stride(0),
                 HAS_PERM=perm is not None, BLOCK_M=block_m or _tokens_bucket(tokens), **config, **consts)
    return out.to(x.dtype).reshape(*lead, out_features)


def nm_mm(x: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, in_features: int, n: int, m: int,
          perm: torch.Tensor | None = None) -> torch.Tensor:
    """x · Wᵀ for an N:M weight in nm_format (values, packed bit mask); x is (..., in_features)."""
    if m & (m - 1) or m > 16 or in_features % max(m, 8):
        raise ValueError(f"nm_mm needs M a power of 2 ≤ 16 and in_features divisible by max(M, 8); got {n}:{m}, {in_features}")
    return _launch(_nm_bitmask_kernel, x, values.shape[0], in_features, values, mask, perm=perm, KEEP=n, GROUP=m)


def nm24_mm(x: torch.Tensor, values: torch.Tensor, nibbles: torch.Tensor, in_features: int,
            perm: torch.Tensor | None = None) -> torch.Tensor:
    """x · Wᵀ for a 2:4 weight given as (values, nibbles_24(mask))."""
    if in_features % 8:
        raise ValueError(f"nm24_mm needs in_features divisible by 8, got {in_features}")
    return _launch(_nm24_kernel, x, values.shape[0], in_features, values, nibbles, perm=perm)


def nm24_gemv(x: torch.Tensor, values: torch.Tensor, nibbles: torch.Tensor, in_features: int,
              perm: torch.Tensor | None = None) -> torch.Tensor:
    """x · Wᵀ for a 2:4 weight, CUDA cores, for up to 16 tokens."""
    tokens = x.numel() // in_features
    if in_features % 8 or tokens > 16:
        raise ValueError(f"nm24_gemv needs in_features divisible by 8 and at most 16 tokens; got {in_features}, {tokens}")
    return _launch(_nm24_gemv_kernel, x, values.shape[0], in_features, values, nibbles, perm=perm,
                   block_m=triton.next_power_of_2(tokens))
