"""Mixture-of-experts FFN in Triton for tens to thousands of tokens: each expert's tokens gathered into blocks.

Between decode (decode.py: every chosen expert read once, all tokens at once) and long prefills (grouped
matmuls), a grouped matmul wastes most of its tiles on experts that hold a few dozen tokens and the sort,
gather and scatter around it cost more than the FFN. Here, after routing (decode._route):
  _compact   one program per routed expert: the (token, slot) pairs that chose it, in token order
  _gate_up   program (block of an expert's tokens, expert, block of neurons): x rows gathered by the list,
             act(gate)·up times the pair's routing weight, stored per expert (bf16, as a Linear would)
  _down      program (block of an expert's tokens, expert, block of output features): those activations times
             down_e, each pair's row written to its own place of (tokens, k + A, hidden), so a sum over the
             middle axis (one reduction, no atomics, no zero fill) gives the output
The shared part (A slices of m neurons that every token runs, weight 1) takes the same programs with the
identity list. Token blocks vary fastest so the programs running together read one expert's weights.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from compress.factorize.decode import _act, _down_rows, _gate_up_rows, route_decode, shared_slices

__all__ = ["LAUNCH", "experts_blocked"]

LAUNCH = {"block_t": 64, "up_n": 64, "up_k": 64, "up_warps": 4, "up_stages": 3, "down_n": 64, "down_k": 64,
          "down_warps": 4, "down_stages": 3, "compact": 1024}


@triton.jit
def _compact(IDX, LIST, COUNT, T, KSLOTS: tl.constexpr, BLOCK_S: tl.constexpr):
    e = tl.program_id(0)
    count = 0
    for s0 in range(0, T * KSLOTS, BLOCK_S):
        slots = s0 + tl.arange(0, BLOCK_S)
        hit = (tl.load(IDX + slots, mask=slots < T * KSLOTS, other=-1) == e).to(tl.int32)
        place = count + tl.cumsum(hit, axis=0) - 1
        tl.store(LIST + e.to(tl.int64) * T + place, slots, mask=hit == 1)
        count += tl.sum(hit, axis=0)
    tl.store(COUNT + e, count)


@triton.jit
def _rows(LIST, COUNT, WEIGHT, p, tb, T, A, KSLOTS: tl.constexpr, BLOCK_T: tl.constexpr):
    """Block tb of program p's rows: (valid, token, row of the (tokens, k + A) output, routing weight)."""
    r = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    if p < A:  # a shared slice: every token in order, weight 1, output slot k + p
        ok = r < T
        token = r
        place = r * (KSLOTS + A) + KSLOTS + p
        coef = ok.to(tl.float32)
    else:  # routed expert p − A: its pairs (token·k + j) in token order, output slot j
        ok = r < tl.load(COUNT + p - A)
        pair = tl.load(LIST + (p - A).to(tl.int64) * T + r, mask=ok, other=0)
        token = pair // KSLOTS
        place = token * (KSLOTS + A) + pair % KSLOTS
        coef = tl.load(WEIGHT + pair, mask=ok, other=0.0)
    return ok, token, place, coef


@triton.jit
def _gate_up(X, W, SW, LIST, COUNT, WEIGHT, ACT, T, M, H, S, A, KSLOTS: tl.constexpr, BLOCK_T: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GELU: tl.constexpr):
    tb, p = tl.program_id(0), tl.program_id(1)
    first = tb * BLOCK_T
    if first < tl.where(p < A, T, tl.load(COUNT + tl.maximum(p - A, 0))):
        ok, token, place, coef = _rows(LIST, COUNT, WEIGHT, p, tb, T, A, KSLOTS, BLOCK_T)
        n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        gate_rows, up_rows, n_ok = _gate_up_rows(W, SW, p, n, M, H, S, A)
        x_rows = X + token.to(tl.int64)[:, None] * H
        gate = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
        up = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < H
            x = tl.load(x_rows + k[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0)
            wg = tl.load(gate_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            wu = tl.load(up_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            gate += tl.dot(x, tl.trans(wg))
            up += tl.dot(x, tl.trans(wu))
        neurons = _act(gate, GELU) * up * coef[:, None]
        rows = (p.to(tl.int64) * T + first + tl.arange(0, BLOCK_T))[:, None] * M
        tl.store(ACT + rows + n[None, :], neurons.to(ACT.dtype.element_ty), mask=ok[:, None] & n_ok[None, :])


@triton.jit
def _down(ACT, W, SD, LIST, COUNT, WEIGHT, OUT, T, M, H, S, A, KSLOTS: tl.constexpr, BLOCK_T: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tb, p = tl.program_id(0), tl.program_id(1)
    first = tb * BLOCK_T
    if first < tl.where(p < A, T, tl.load(COUNT + tl.maximum(p - A, 0))):
        ok, token, place, coef = _rows(LIST, COUNT, WEIGHT, p, tb, T, A, KSLOTS, BLOCK_T)
        n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < H
        act_rows = ACT + (p.to(tl.int64) * T + first + tl.arange(0, BLOCK_T))[:, None] * M
        acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, M, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            w_rows, k_ok = _down_rows(W, SD, p, n, k, M, H, S, A)
            a = tl.load(act_rows + k[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(a, tl.trans(w))
        tl.store(OUT + place.to(tl.int64)[:, None] * H + n[None, :], acc.to(OUT.dtype.element_ty),
                 mask=ok[:, None] & n_ok[None, :])


def experts_blocked(x: torch.Tensor, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_k: int,
                    gelu_tanh: bool = False, shared_gate_up: torch.Tensor | None = None,
                    shared_down: torch.Tensor | None = None, launch: dict | None = None) -> torch.Tensor:
    """(tokens, hidden): routing (softmax top-k renormalised) and the routed plus shared output, five launches."""
    from compress.factorize.launch import blocked_launch

    c = {**LAUNCH, **(blocked_launch(x.shape[0], x.device) if launch is None else launch)}
    tokens, hidden = x.shape
    experts, m = gate_up.shape[0], gate_up.shape[1] // 2
    shared_gate_up, shared_down, width, slices = shared_slices(gate_up, down, shared_gate_up, shared_down)
    x, gate_up, down = x.contiguous(), gate_up.contiguous(), down.contiguous()
    weights, index = route_decode(x, router, top_k)
    pairs = torch.empty(experts, tokens, device=x.device, dtype=torch.int32)
    counts = torch.empty(experts, device=x.device, dtype=torch.int32)
    _compact[(experts,)](index, pairs, counts, tokens, KSLOTS=top_k, BLOCK_S=c["compact"])
    neurons = torch.empty(slices + experts, tokens, m, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(tokens, c["block_t"]), slices + experts)
    _gate_up[grid + (triton.cdiv(m, c["up_n"]),)](
        x, gate_up, shared_gate_up, pairs, counts, weights, neurons, tokens, m, hidden, width, slices, KSLOTS=top_k,
        BLOCK_T=c["block_t"], BLOCK_N=c["up_n"], BLOCK_K=c["up_k"], GELU=gelu_tanh, num_warps=c["up_warps"],
        num_stages=c["up_stages"])
    out = torch.empty(tokens, top_k + slices, hidden, device=x.device, dtype=x.dtype)
    _down[grid + (triton.cdiv(hidden, c["down_n"]),)](
        neurons, down, shared_down, pairs, counts, weights, out, tokens, m, hidden, width, slices, KSLOTS=top_k,
        BLOCK_T=c["block_t"], BLOCK_N=c["down_n"], BLOCK_K=c["down_k"], num_warps=c["down_warps"],
        num_stages=c["down_stages"])
    return out.sum(1)
