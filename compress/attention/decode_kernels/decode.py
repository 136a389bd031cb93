"""Double Sparsity decode kernels (Triton): one new query token per sequence against a KV cache.

  label_cache    the heavy channels of every cached key per KV head, 16-bit or packed 4-bit
                 (compress.attention.decode_kernels.labels); built as keys are appended, not timed here
  score_labels   approximate logits of every cached token: the query heads of a KV head share its channel
                 set, so their label scores sum to one dot product with the summed query labels
  select         the T best tokens per (sequence, KV head): an exact threshold select whose candidates the
                 scoring kernel gathers (compress.attention.decode_kernels.select), or torch.topk (n ≤ T keeps them all)
  sparse_decode  exact softmax attention over the selected tokens, split over chunks of the selection
                 (every query head of a KV head in one program, so each K/V row is read once), the splits'
                 partial softmaxes merged by a second small kernel (no split when the rows alone fill the GPU)
`double_sparse_decode` runs all three. Shapes: query (b, heads, d); key/value (b, kv_heads, n, d).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from compress.attention.decode_kernels.labels import label_cache, score_labels, token_count
from compress.attention.decode_kernels.select import select_top, threshold_plan, threshold_top

__all__ = ["label_cache", "score_labels", "select_top", "select_tokens", "sparse_decode", "double_sparse_decode",
           "SELECTIONS"]

SELECTIONS = ("threshold", "topk-half", "topk")


@triton.jit
def _sparse_attention_kernel(Q, K, V, IDX, M, L, ACC, T, scale, stride_qb, stride_qh, stride_kb, stride_kh,
                             stride_kn, stride_vb, stride_vh, stride_vn, stride_ib, stride_ih,
                             KVH: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr,
                             BLOCK_T: tl.constexpr, SPLITS: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // KVH).to(tl.int64)  # a large cache's offsets pass 2^31 elements
    kv = (pid % KVH).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    h_ok = h < GROUP
    d = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + (kv * GROUP + h)[:, None] * stride_qh + d[None, :], mask=h_ok[:, None], other=0.0)
    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, D], dtype=tl.float32)
    start = split * CHUNK
    for offset in range(0, CHUNK, BLOCK_T):  # every split's first block holds a selected token
        t = start + offset + tl.arange(0, BLOCK_T)
        t_ok = t < T
        idx = tl.load(IDX + b * stride_ib + kv * stride_ih + t, mask=t_ok, other=0).to(tl.int64)
        k = tl.load(K + b * stride_kb + kv * stride_kh + idx[:, None] * stride_kn + d[None, :], mask=t_ok[:, None], other=0.0)
        logits = tl.dot(q, tl.trans(k)) * scale
        logits = tl.where(t_ok[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(logits - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(V + b * stride_vb + kv * stride_vh + idx[:, None] * stride_vn + d[None, :], mask=t_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    head = b * KVH * GROUP + kv * GROUP + h
    if SPLITS == 1:  # no partials to merge: the output (ACC) directly
        tl.store(ACC + head[:, None] * D + d[None, :], (acc / l[:, None]).to(ACC.dtype.element_ty), mask=h_ok[:, None])
    else:
        row = head * SPLITS + split  # partials laid out (b, heads, splits)
        tl.store(M + row, m, mask=h_ok)
        tl.store(L + row, l, mask=h_ok)
        tl.store(ACC + row[:, None] * D + d[None, :], acc, mask=h_ok[:, None])


@triton.jit
def _merge_kernel(M, L, ACC, OUT, SPLITS, SPLITS_PAD: tl.constexpr, D: tl.constexpr):
    row = tl.program_id(0)  # one (sequence, query head)
    s = tl.arange(0, SPLITS_PAD)
    s_ok = s < SPLITS
    d = tl.arange(0, D)
    m = tl.load(M + row * SPLITS + s, mask=s_ok, other=float("-inf"))
    weight = tl.where(s_ok, tl.exp(m - tl.max(m, axis=0)), 0.0)
    total = tl.sum(tl.load(L + row * SPLITS + s, mask=s_ok, other=0.0) * weight, axis=0)
    acc = tl.load(ACC + (row * SPLITS + s)[:, None] * D + d[None, :], mask=s_ok[:, None], other=0.0)
    tl.store(OUT + row * D + d, (tl.sum(acc * weight[:, None], axis=0) / total).to(OUT.dtype.element_ty))


def _splits(programs: int, selected: int, block_t: int, target: int = 512) -> tuple[int, int]:
    """(splits, chunk): enough programs to fill the GPU, every split non-empty, chunks whole blocks. With
    `target` programs or more unsplit, the partials and their merge are skipped (measured faster on one H200
    at batch 16, 32 heads: 0.249 vs 0.266 ms at 64K)."""
    splits = max(1, min(triton.cdiv(selected, block_t), triton.cdiv(target, programs)))
    chunk = triton.cdiv(triton.cdiv(selected, splits), block_t) * block_t
    return triton.cdiv(selected, chunk), chunk


def sparse_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor, scale: float,
                  block_t: int = 64, target: int = 512, num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """(b, heads, d): softmax attention of each query head over the tokens `index` (b, kv_heads, T) keeps."""
    b, h, d = query.shape
    kvh, selected = key.shape[1], index.shape[-1]
    group = h // kvh
    index = index.contiguous()
    splits, chunk = _splits(b * kvh, selected, block_t, target)
    out = torch.empty(b, h, d, device=query.device, dtype=query.dtype)
    m = torch.empty(b, h, splits if splits > 1 else 0, device=query.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(b, h, splits, d, device=query.device, dtype=torch.float32) if splits > 1 else out
    _sparse_attention_kernel[(b * kvh, splits)](
        query, key, value, index, m, l, acc, selected, scale, query.stride(0), query.stride(1),
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        index.stride(0), index.stride(1), KVH=kvh, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)),
        D=d, BLOCK_T=block_t, SPLITS=splits, CHUNK=chunk, num_warps=num_warps, num_stages=num_stages)
    if splits > 1:
        _merge_kernel[(b * h,)](m, l, acc, out, SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), D=d)
    return out


def select_tokens(query: torch.Tensor, labels: torch.Tensor, heavy: torch.Tensor, budget: int,
                  selection: str = "threshold", prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, index): label scores and the top `budget` tokens per KV head (all of them if n ≤ budget).
    threshold and topk-half score in float16 (which may tie where float32 would not); topk in float32.
    `prior`: a position prior (kv_heads, buckets) added to the scores (labels.score_labels)."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}: choose from {', '.join(SELECTIONS)}")
    b, kvh, n = query.shape[0], labels.shape[1], token_count(labels)
    if selection == "threshold" and n > budget:
        plan = threshold_plan(b * kvh, n, budget, query.device)
        scores = score_labels(query, labels, heavy, torch.float16, plan, prior=prior)
        return scores, threshold_top(scores, plan, budget)
    scores = score_labels(query, labels, heavy, torch.float32 if selection == "topk" else torch.float16, prior=prior)
    return scores, select_top(scores, budget)


def double_sparse_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, labels: torch.Tensor,
                         heavy: torch.Tensor, budget: int, scale: float, selection: str = "threshold",
                         prior: torch.Tensor | None = None) -> torch.Tensor:
    """Score with labels (label_cache, 16- or 4-bit), keep the top `budget` tokens per KV head, attend exactly
    over them: (b, heads, d). selection: threshold (the fastest measured on one H200) | topk-half | topk.
    `prior`: the layer's position prior (kv_heads, buckets), added to the label scores."""
    return sparse_decode(query, key, value, select_tokens(query, labels, heavy, budget, selection, prior)[1], scale)
