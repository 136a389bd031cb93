"""Double Sparsity decode kernels (Triton): one new query token per sequence against a KV cache.

  label_cache    the heavy channels of every cached key, per KV head, contiguous (batch, kv_heads, tokens, r)
                 in the cache's dtype (16-bit labels); built as keys are appended, not timed here
  score_labels   approximate logits of every cached token: the query heads of a KV head share its channel
                 set, so their label scores sum to one dot product with the summed query labels
  select_top     the T best tokens per (sequence, KV head): torch.topk (a token count ≤ T keeps them all),
                 or radix_top (compress.attention.select) fed by a histogram the scoring kernel counts
  sparse_decode  exact softmax attention over the selected tokens, split over chunks of the selection
                 (every query head of a KV head in one program, so each K/V row is read once), then merged
`double_sparse_decode` runs all three. Shapes: query (b, heads, d); key/value (b, kv_heads, n, d).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from compress.attention.select import BINS, order_key, radix_top

__all__ = ["label_cache", "score_labels", "select_top", "sparse_decode", "double_sparse_decode"]


def label_cache(key: torch.Tensor, heavy: torch.Tensor) -> torch.Tensor:
    """(b, kv_heads, n, r): each KV head's heavy channels (`heavy` (kv_heads, r)) of every cached key."""
    b, kvh, n, _ = key.shape
    index = heavy.to(key.device, torch.long)[None, :, None, :].expand(b, kvh, n, heavy.shape[-1])
    return torch.gather(key, -1, index).contiguous()


@triton.jit
def _score_kernel(Q, LAB, HEAVY, S, HIST, N, stride_qb, stride_qh, stride_lb, stride_lh, stride_ln, stride_sb,
                  stride_sh, KVH: tl.constexpr, GROUP: tl.constexpr, R: tl.constexpr, R_PAD: tl.constexpr,
                  BLOCK_N: tl.constexpr, COUNT_HIGH: tl.constexpr, BINS: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // KVH).to(tl.int64)  # a large cache's offsets pass 2^31 elements
    kv = pid % KVH
    r = tl.arange(0, R_PAD)
    r_ok = r < R
    channel = tl.load(HEAVY + kv * R + r, mask=r_ok, other=0)
    q = tl.zeros([R_PAD], dtype=tl.float32)
    for g in tl.static_range(GROUP):
        q += tl.load(Q + b * stride_qb + (kv * GROUP + g) * stride_qh + channel, mask=r_ok, other=0.0).to(tl.float32)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    labels = tl.load(LAB + b * stride_lb + kv * stride_lh + n[:, None] * stride_ln + r[None, :],
                     mask=n_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)
    score = tl.sum(labels * q[None, :], axis=1)
    tl.store(S + b * stride_sb + kv * stride_sh + n, score, mask=n_ok)
    if COUNT_HIGH:  # the radix select's first digit, counted while the scores are in registers
        digit = tl.where(n_ok, order_key(score) >> 8, BINS - 1)
        tl.atomic_add(HIST + pid * BINS + tl.arange(0, BINS), tl.histogram(digit, BINS))


def score_labels(query: torch.Tensor, labels: torch.Tensor, heavy: torch.Tensor, block_n: int = 256,
                 dtype=torch.float32, histogram: torch.Tensor | None = None) -> torch.Tensor:
    """(b, kv_heads, n) label scores (accumulated in float32, stored as `dtype`), summed over the query heads
    of each KV head. `histogram` (rows × BINS int32, zeroed): also count the high bytes of the scores'
    float16 keys for compress.attention.select.radix_top."""
    b, h, _ = query.shape
    _, kvh, n, r = labels.shape
    scores = torch.empty(b, kvh, n, device=query.device, dtype=dtype)
    heavy = heavy.to(query.device, torch.int32).contiguous()
    grid = (b * kvh, triton.cdiv(n, block_n))
    _score_kernel[grid](query, labels, heavy, scores, scores if histogram is None else histogram, n,
                        query.stride(0), query.stride(1), labels.stride(0), labels.stride(1), labels.stride(2),
                        scores.stride(0), scores.stride(1), KVH=kvh, GROUP=h // kvh, R=r,
                        R_PAD=max(triton.next_power_of_2(r), 2), BLOCK_N=block_n, COUNT_HIGH=histogram is not None,
                        BINS=BINS)
    return scores


def select_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """(b, kv_heads, min(budget, n)) int32 token indices of the highest scores (all tokens if n ≤ budget)."""
    b, kvh, n = scores.shape
    if n <= budget:
        return torch.arange(n, device=scores.device, dtype=torch.int32).expand(b, kvh, n)
    return scores.topk(budget, dim=-1, sorted=False).indices.to(torch.int32)


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
    row = (b * KVH * GROUP + kv * GROUP + h) * SPLITS + split  # partials laid out (b, heads, splits)
    tl.store(M + row, m, mask=h_ok)
    tl.store(L + row, l, mask=h_ok)
    tl.store(ACC + row[:, None] * D + d[None, :], acc, mask=h_ok[:, None])


def _splits(programs: int, selected: int, block_t: int, target: int = 528) -> tuple[int, int]:
    """(splits, chunk): enough programs to fill the GPU, every split non-empty, chunks whole blocks."""
    splits = max(1, min(triton.cdiv(selected, block_t), triton.cdiv(target, programs)))
    chunk = triton.cdiv(triton.cdiv(selected, splits), block_t) * block_t
    return triton.cdiv(selected, chunk), chunk


def sparse_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor, scale: float,
                  block_t: int = 64) -> torch.Tensor:
    """(b, heads, d): softmax attention of each query head over the tokens `index` (b, kv_heads, T) keeps."""
    b, h, d = query.shape
    kvh, selected = key.shape[1], index.shape[-1]
    group = h // kvh
    index = index.contiguous()
    splits, chunk = _splits(b * kvh, selected, block_t)
    m = torch.empty(b, h, splits, device=query.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(b, h, splits, d, device=query.device, dtype=torch.float32)
    _sparse_attention_kernel[(b * kvh, splits)](
        query, key, value, index, m, l, acc, selected, scale, query.stride(0), query.stride(1),
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        index.stride(0), index.stride(1), KVH=kvh, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)),
        D=d, BLOCK_T=block_t, SPLITS=splits, CHUNK=chunk)
    weight = torch.exp(m - m.amax(-1, keepdim=True))  # merge the splits' partial softmaxes
    return ((acc * weight[..., None]).sum(2) / (l * weight).sum(-1, keepdim=True)).to(query.dtype)


def double_sparse_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, labels: torch.Tensor,
                         heavy: torch.Tensor, budget: int, scale: float, selection: str = "topk-half") -> torch.Tensor:
    """Score with labels, keep the top `budget` tokens per KV head, attend exactly over them: (b, heads, d).
    selection: topk-half (float16 scores, torch.topk; the fastest measured) | topk (float32 scores) |
    radix (float16 scores, compress.attention.select; its histograms cost more than they save, measured on
    one H200). Float16 scores may tie where float32 ones would not."""
    b, kvh, n = key.shape[0], key.shape[1], key.shape[2]
    if selection == "radix" and n > budget:
        histogram = torch.zeros(b * kvh, BINS, device=query.device, dtype=torch.int32)
        scores = score_labels(query, labels, heavy, 1024, torch.float16, histogram)
        index = radix_top(scores, histogram, budget)
    else:
        scores = score_labels(query, labels, heavy, dtype=torch.float32 if selection == "topk" else torch.float16)
        index = select_top(scores, budget)
    return sparse_decode(query, key, value, index, scale)
