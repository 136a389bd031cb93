"""Few-token mixture-of-experts FFN in Triton (decode): each chosen expert's weights are read once.

For a handful of tokens a grouped matmul wastes most of its tiles and the sort around it costs more than
the FFN; here three kernels work expert by expert instead:
  _route     router logits (rounded to the weights' dtype, as a Linear returns them), softmax, top-k,
             renormalised: one launch instead of five small ones (also for blocked.py's token counts)
  _gate_up   program (expert, block of neurons, slice of the hidden dim): returns at once when no token
             chose the expert, else partial gate·x and up·x for every token (tl.dot needs 16 rows; the extra
             rows cost no bytes); the split over the hidden dim gives the GPU enough programs
  _down      program (block of output features): per chosen expert, the partials summed, act(gate)·up times
             each token's routing weight, then down_e · that; no atomics
So a token that runs one expert of four reads a quarter of the FFN's bytes. A shared part (neurons every
token runs) rides in the same two launches as extra programs over slices of m neurons, weight 1 for every
token, instead of four more launches (two matmuls, the activation, the sum). Weights as FactorizedMLP holds
them: router (E, hidden), gate_up (E, 2m, hidden), down (E, hidden, m), shared (2s, hidden) and (hidden, s).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_TOKENS", "LAUNCH", "experts_decode", "route_decode"]

MAX_TOKENS = 16  # one tl.dot row block
# measured on one H200 at the 7B FFN shape (sweep of splits, blocks, warps, stages): split 2 fastest for one
# token, and no split for more (the down kernel then reads each partial once)
LAUNCH = {"split": 2, "up_n": 32, "up_k": 256, "up_warps": 4, "down_n": 32, "down_k": 128, "down_warps": 4,
          "down_stages": 1, "route_k": 512}


@triton.jit
def _act(g, GELU: tl.constexpr):
    if GELU:  # tanh approximation (Gemma's gelu_pytorch_tanh)
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        return 0.5 * g * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
    return g * tl.sigmoid(g)


@triton.jit
def _route(X, R, IDX, WEIGHT, T, H, E, KSLOTS: tl.constexpr, T_PAD: tl.constexpr, E_PAD: tl.constexpr,
           BLOCK_K: tl.constexpr):
    t = tl.program_id(0) * T_PAD + tl.arange(0, T_PAD)  # one program per T_PAD tokens
    e = tl.arange(0, E_PAD)
    logits = tl.zeros([T_PAD, E_PAD], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + t[:, None] * H + k[None, :], mask=(t[:, None] < T) & (k[None, :] < H), other=0.0)
        r = tl.load(R + e[:, None] * H + k[None, :], mask=(e[:, None] < E) & (k[None, :] < H), other=0.0)
        logits += tl.dot(x, tl.trans(r))
    logits = logits.to(X.dtype.element_ty).to(tl.float32)
    logits = tl.where(e[None, :] < E, logits, float("-inf"))
    probs = tl.exp(logits - tl.max(logits, axis=1)[:, None])  # the softmax's denominator cancels below
    total = tl.zeros([T_PAD], dtype=tl.float32)
    work = probs
    for j in tl.static_range(KSLOTS):  # the top-k's sum, by repeated arg-max; ties go to the lower expert
        best = tl.max(work, axis=1)
        pick = tl.min(tl.where(work == best[:, None], e[None, :], E_PAD), axis=1)
        total += best
        work = tl.where(e[None, :] == pick[:, None], -1.0, work)
    work = probs
    for j in tl.static_range(KSLOTS):  # again, storing
        best = tl.max(work, axis=1)
        pick = tl.min(tl.where(work == best[:, None], e[None, :], E_PAD), axis=1)
        tl.store(IDX + t * KSLOTS + j, pick, mask=t < T)
        tl.store(WEIGHT + t * KSLOTS + j, best / total, mask=t < T)
        work = tl.where(e[None, :] == pick[:, None], -1.0, work)


@triton.jit
def _gate_up_rows(W, SW, p, n, M, H, S, A):
    """Row pointers of program p's gate and up weights for neurons n: p < A is slice p of the shared part
    (SW (2S, H): gate rows p·M + n, up rows S + p·M + n), else routed expert p − A of W (E, 2M, H)."""
    if p < A:
        gate_rows = SW + (p * M + n).to(tl.int64)[:, None] * H
        up_rows = SW + (S + p * M + n).to(tl.int64)[:, None] * H
        n_ok = (n < M) & (p * M + n < S)
    else:
        base = W + (p - A).to(tl.int64) * 2 * M * H
        gate_rows = base + n.to(tl.int64)[:, None] * H
        up_rows = base + (M + n).to(tl.int64)[:, None] * H
        n_ok = n < M
    return gate_rows, up_rows, n_ok


@triton.jit
def _down_rows(W, SD, p, n, k, M, H, S, A):
    """Row pointers of program p's down weights for output features n, and which of its neurons k exist:
    shared slice p of SD (H, S) (columns p·M + k), else routed expert p − A of W (E, H, M)."""
    if p < A:
        w_rows = SD + n.to(tl.int64)[:, None] * S + p * M
        k_ok = (k < M) & (p * M + k < S)
    else:
        w_rows = W + (p - A).to(tl.int64) * H * M + n.to(tl.int64)[:, None] * M
        k_ok = k < M
    return w_rows, k_ok


@triton.jit
def _gate_up(X, W, SW, IDX, P, T, M, H, S, A, SPLIT_H, KSLOTS: tl.constexpr, S_PAD: tl.constexpr,
             T_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    p = tl.program_id(0)  # p < A: slice p of the shared part (rows p·M.. of SW); else routed expert p − A
    slots = tl.arange(0, S_PAD)
    chosen = tl.load(IDX + slots, mask=slots < T * KSLOTS, other=-2)
    if (p < A) | (tl.sum((chosen == p - A).to(tl.int32), axis=0) > 0):
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        gate_rows, up_rows, n_ok = _gate_up_rows(W, SW, p, n, M, H, S, A)
        split = tl.program_id(2)
        t = tl.arange(0, T_PAD)
        gate = tl.zeros([T_PAD, BLOCK_N], dtype=tl.float32)
        up = tl.zeros([T_PAD, BLOCK_N], dtype=tl.float32)
        for k0 in range(split * SPLIT_H, tl.minimum(H, (split + 1) * SPLIT_H), BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < H
            x = tl.load(X + t[:, None] * H + k[None, :], mask=(t[:, None] < T) & k_ok[None, :], other=0.0)
            wg = tl.load(gate_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            wu = tl.load(up_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            gate += tl.dot(x, tl.trans(wg))
            up += tl.dot(x, tl.trans(wu))
        row = ((split * tl.num_programs(0) + p) * T_PAD + t[:, None]) * 2 * M  # P: (split, A + E, T_PAD, 2, M)
        tl.store(P + row + n[None, :], gate, mask=(t[:, None] < T) & n_ok[None, :])
        tl.store(P + row + M + n[None, :], up, mask=(t[:, None] < T) & n_ok[None, :])


@triton.jit
def _down(P, W, SD, IDX, WEIGHT, OUT, T, M, H, E, S, A, SPLITS: tl.constexpr, KSLOTS: tl.constexpr,
          T_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GELU: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    t = tl.arange(0, T_PAD)
    t_ok = t < T
    acc = tl.zeros([T_PAD, BLOCK_N], dtype=tl.float32)
    for p in range(0, A + E):
        e = p - A
        coef = tl.zeros([T_PAD], dtype=tl.float32)  # token t's routing weight for expert e (0: not chosen)
        for j in tl.static_range(KSLOTS):
            pick = tl.load(IDX + t * KSLOTS + j, mask=t_ok, other=-2)
            coef += tl.where(pick == e, tl.load(WEIGHT + t * KSLOTS + j, mask=t_ok, other=0.0), 0.0)
        coef = tl.where(p < A, t_ok.to(tl.float32), coef)  # the shared part: every token, weight 1
        if tl.max(coef, axis=0) > 0:
            for k0 in range(0, M, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                w_rows, k_ok = _down_rows(W, SD, p, n, k, M, H, S, A)
                ok = (t_ok & (coef > 0))[:, None] & k_ok[None, :]
                gate = tl.zeros([T_PAD, BLOCK_K], dtype=tl.float32)
                up = tl.zeros([T_PAD, BLOCK_K], dtype=tl.float32)
                for s in tl.static_range(SPLITS):
                    row = ((s * (A + E) + p) * T_PAD + t[:, None]) * 2 * M
                    gate += tl.load(P + row + k[None, :], mask=ok, other=0.0)
                    up += tl.load(P + row + M + k[None, :], mask=ok, other=0.0)
                neurons = _act(gate, GELU) * up * coef[:, None]
                w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                acc += tl.dot(neurons.to(w.dtype), tl.trans(w))
    tl.store(OUT + t[:, None] * H + n[None, :], acc.to(OUT.dtype.element_ty), mask=t_ok[:, None] & n_ok[None, :])


def shared_slices(gate_up: torch.Tensor, down: torch.Tensor, shared_gate_up: torch.Tensor | None,
                  shared_down: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The shared part as the kernels take it: (gate_up, down, width s, slices of an expert's width); without
    one, width 0 and the routed tensors stand in as pointers never read."""
    m = gate_up.shape[1] // 2
    if shared_down is None:
        return gate_up, down, 0, 0
    width = shared_down.shape[1]
    return shared_gate_up.contiguous(), shared_down.contiguous(), width, triton.cdiv(width, m)


def route_decode(x: torch.Tensor, router: torch.Tensor, top_k: int, block_k: int = LAUNCH["route_k"]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32, index int32), each (tokens, k): softmax top-k renormalised, one launch for any tokens."""
    tokens, hidden = x.shape
    experts = router.shape[0]
    index = torch.empty(tokens, top_k, device=x.device, dtype=torch.int32)
    weights = torch.empty(tokens, top_k, device=x.device, dtype=torch.float32)
    _route[(triton.cdiv(tokens, MAX_TOKENS),)](x, router, index, weights, tokens, hidden, experts, KSLOTS=top_k, T_PAD=MAX_TOKENS,
                 E_PAD=max(16, triton.next_power_of_2(experts)), BLOCK_K=block_k, num_warps=4)
    return weights, index


def experts_decode(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, index: torch.Tensor,
                   weights: torch.Tensor, gelu_tanh: bool = False, launch: dict | None = None,
                   shared_gate_up: torch.Tensor | None = None, shared_down: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """(tokens, hidden) = Σ_j weights[t, j] · expert_{index[t, j]}(x[t]) for at most MAX_TOKENS tokens, plus the
    shared part (shared_gate_up (2s, hidden), shared_down (hidden, s)) when given: read in slices of an
    expert's width by the same two launches, with weight 1 for every token."""
    tokens, hidden = x.shape
    experts, m = gate_up.shape[0], gate_up.shape[1] // 2
    if tokens > MAX_TOKENS:
        raise ValueError(f"experts_decode takes at most {MAX_TOKENS} tokens, got {tokens}")
    from compress.factorize.launch import decode_launch

    c = {**LAUNCH, **(decode_launch(tokens, x.device) if launch is None else launch)}
    slots = index.shape[1]
    x, gate_up, down = x.contiguous(), gate_up.contiguous(), down.contiguous()
    index, weights = index.to(torch.int32).contiguous(), weights.float().contiguous()
    shared_gate_up, shared_down, width, slices = shared_slices(gate_up, down, shared_gate_up, shared_down)
    split_h = triton.cdiv(triton.cdiv(hidden, c["split"]), c["up_k"]) * c["up_k"]
    splits = triton.cdiv(hidden, split_h)
    partial = torch.empty(splits, slices + experts, MAX_TOKENS, 2, m, device=x.device, dtype=torch.float32)
    _gate_up[(slices + experts, triton.cdiv(m, c["up_n"]), splits)](
        x, gate_up, shared_gate_up, index, partial, tokens, m, hidden, width, slices, split_h, KSLOTS=slots,
        S_PAD=triton.next_power_of_2(MAX_TOKENS * slots), T_PAD=MAX_TOKENS, BLOCK_N=c["up_n"], BLOCK_K=c["up_k"],
        num_warps=c["up_warps"])
    out = torch.empty(tokens, hidden, device=x.device, dtype=x.dtype)
    _down[(triton.cdiv(hidden, c["down_n"]),)](
        partial, down, shared_down, index, weights, out, tokens, m, hidden, experts, width, slices, SPLITS=splits,
        KSLOTS=slots, T_PAD=MAX_TOKENS, BLOCK_N=c["down_n"], BLOCK_K=c["down_k"], GELU=gelu_tanh,
        num_warps=c["down_warps"], num_stages=c["down_stages"])
    return out
