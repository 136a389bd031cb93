"""Few-token mixture-of-experts FFN in Triton (decode): each expert's weights are read at most once.

For a handful of tokens a grouped matmul wastes most of its tiles and the sort around it costs more than
the FFN; here two kernels work expert by expert instead:
  _gate_up   program (expert, block of neurons): returns at once when no token chose the expert, else
             act(gate·x)·up for every token (tl.dot needs 16 rows; the extra rows cost no bytes)
  _down      program (block of output features): Σ over the chosen experts of down_e · (weight · neurons),
             each token's routing weight for the expert folded into its rows, no atomics
So a token that runs one expert of four reads a quarter of the FFN's bytes. Weights as FactorizedMLP
holds them: gate_up (E, 2m, hidden), down (E, hidden, m); index/weights (tokens, k) from the router.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_TOKENS", "experts_decode"]

MAX_TOKENS = 16  # one tl.dot row block


@triton.jit
def _act(g, GELU: tl.constexpr):
    if GELU:  # tanh approximation (Gemma's gelu_pytorch_tanh)
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        return 0.5 * g * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
    return g * tl.sigmoid(g)


@triton.jit
def _gate_up(X, W, IDX, A, T, M, H, KSLOTS: tl.constexpr, S_PAD: tl.constexpr, T_PAD: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GELU: tl.constexpr):
    e = tl.program_id(0)
    slots = tl.arange(0, S_PAD)
    chosen = tl.load(IDX + slots, mask=slots < T * KSLOTS, other=-1)
    if tl.sum((chosen == e).to(tl.int32), axis=0) > 0:
        _gate_up_block(X, W, A, e, T, M, H, T_PAD, BLOCK_N, BLOCK_K, GELU)


@triton.jit
def _gate_up_block(X, W, A, e, T, M, H, T_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GELU: tl.constexpr):
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < M
    t = tl.arange(0, T_PAD)
    gate = tl.zeros([T_PAD, BLOCK_N], dtype=tl.float32)
    up = tl.zeros([T_PAD, BLOCK_N], dtype=tl.float32)
    base = W + e.to(tl.int64) * 2 * M * H
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < H
        x = tl.load(X + t[:, None] * H + k[None, :], mask=(t[:, None] < T) & k_ok[None, :], other=0.0)
        wg = tl.load(base + n[:, None] * H + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        wu = tl.load(base + (M + n[:, None]) * H + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        gate += tl.dot(x, tl.trans(wg))
        up += tl.dot(x, tl.trans(wu))
    neurons = _act(gate, GELU) * up
    tl.store(A + (e * T_PAD + t[:, None]) * M + n[None, :], neurons, mask=n_ok[None, :])


@triton.jit
def _down(A, W, IDX, WEIGHT, OUT, T, M, H, E, KSLOTS: tl.constexpr, T_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    t = tl.arange(0, T_PAD)
    acc = tl.zeros([T_PAD, BLOCK_N], dtype=tl.float32)
    for e in range(0, E):
        coef = tl.zeros([T_PAD], dtype=tl.float32)  # token t's routing weight for expert e (0: not chosen)
        for j in tl.static_range(KSLOTS):
            pick = tl.load(IDX + t * KSLOTS + j, mask=t < T, other=-1)
            coef += tl.where(pick == e, tl.load(WEIGHT + t * KSLOTS + j, mask=t < T, other=0.0), 0.0)
        if tl.max(coef, axis=0) > 0:
            base = W + e.to(tl.int64) * H * M
            for k0 in range(0, M, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                k_ok = k < M
                a = tl.load(A + (e * T_PAD + t[:, None]) * M + k[None, :], mask=k_ok[None, :], other=0.0)
                w = tl.load(base + n[:, None] * M + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                acc += tl.dot((a * coef[:, None]).to(w.dtype), tl.trans(w))
    tl.store(OUT + t[:, None] * H + n[None, :], acc.to(OUT.dtype.element_ty), mask=(t[:, None] < T) & n_ok[None, :])


def experts_decode(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, index: torch.Tensor,
                   weights: torch.Tensor, gelu_tanh: bool = False) -> torch.Tensor:
    """(tokens, hidden) = Σ_j weights[t, j] · expert_{index[t, j]}(x[t]) for at most MAX_TOKENS tokens."""
    tokens, hidden = x.shape
    experts, m = gate_up.shape[0], gate_up.shape[1] // 2
    if tokens > MAX_TOKENS:
        raise ValueError(f"experts_decode takes at most {MAX_TOKENS} tokens, got {tokens}")
    slots = index.shape[1]
    x, gate_up, down = x.contiguous(), gate_up.contiguous(), down.contiguous()
    index = index.to(torch.int32).contiguous()
    weights = weights.float().contiguous()
    neurons = torch.empty(experts, MAX_TOKENS, m, device=x.device, dtype=torch.float32)
    _gate_up[(experts, triton.cdiv(m, 16))](x, gate_up, index, neurons, tokens, m, hidden, KSLOTS=slots,
                                              S_PAD=triton.next_power_of_2(MAX_TOKENS * slots), T_PAD=MAX_TOKENS, BLOCK_N=16, BLOCK_K=256, GELU=gelu_tanh,
                                              num_warps=4)
    out = torch.empty(tokens, hidden, device=x.device, dtype=x.dtype)
    _down[(triton.cdiv(hidden, 32),)](neurons, down, index, weights, out, tokens, m, hidden, experts, KSLOTS=slots,
                                      T_PAD=MAX_TOKENS, BLOCK_N=32, BLOCK_K=256, num_warps=4)
    return out
