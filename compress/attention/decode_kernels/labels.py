"""The label cache of Double Sparsity decode and the Triton kernel that scores every cached token with it.

Two formats, per (sequence, KV head), built as keys are appended (not timed in the benchmark) by
compress.attention.decode_kernels.decode_torch (plain PyTorch, re-exported here): 16-bit rows of the r heavy channels, or
4-bit codes packed 8 to an int32 word, one plane per word, then a plane of each key's float16 min and step.
The codes are the evaluation path's (compress.attention.evaluation.sparse.label_codes: per key, asymmetric min/max,
round to nearest); only min and step are rounded to float16 there (float32 in the evaluation path). 8 bytes
a token at r = 8.
A score is q·label over the heavy channels, the query heads of a KV head summed first (they share its
channel set); 4-bit: min·Σq + step·Σ q·code, unpacked in registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from compress.attention.decode_kernels.decode_torch import (dequantize_labels, label_bytes, label_cache,  # noqa: F401 (re-exported)
                                             token_count)
from compress.attention.calibration.prior import BUCKETS, EXACT
from compress.attention.decode_kernels.select import MAX_PROGRAMS, ThresholdPlan, kth_largest_key, order_key, stretch

__all__ = ["label_cache", "dequantize_labels", "label_bytes", "score_labels", "token_count"]


@triton.jit
def _query_labels(Q, HEAVY, b, kv, stride_qb, stride_qh, GROUP: tl.constexpr, R: tl.constexpr, R_PAD: tl.constexpr):
    """The heavy channels of the KV head's query heads, summed: (R_PAD,) float32 and the channel positions."""
    c = tl.arange(0, R_PAD)
    c_ok = c < R
    channel = tl.load(HEAVY + kv * R + c, mask=c_ok, other=0)
    q = tl.zeros([R_PAD], dtype=tl.float32)
    for g in tl.static_range(GROUP):
        q += tl.load(Q + b * stride_qb + (kv * GROUP + g) * stride_qh + channel, mask=c_ok, other=0.0).to(tl.float32)
    return q, c


@triton.jit
def _scores_at(LAB, n, n_ok, q, c, stride_plane, R: tl.constexpr, PACKED: tl.constexpr, WORDS: tl.constexpr):
    """float32 label scores of tokens `n` (2-D) of one (sequence, KV head) whose labels start at LAB."""
    if PACKED:  # planes stride_plane apart, tokens contiguous in each
        dot = tl.zeros(n.shape, dtype=tl.float32)
        for w in tl.static_range(WORDS):
            word = tl.load(LAB + w * stride_plane + n, mask=n_ok, other=0)
            for j in tl.static_range(8):
                if w * 8 + j < R:
                    q_j = tl.sum(tl.where(c == w * 8 + j, q, 0.0), axis=0)  # loop-invariant: hoisted
                    # the code as a float without an int-to-float conversion (a slow unit): 2^23 + code
                    code = (((word >> (4 * j)) & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    dot += q_j * code
        meta = tl.load(LAB + WORDS * stride_plane + n, mask=n_ok, other=0)
        low = (meta & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        step = ((meta >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        score = low * tl.sum(q, axis=0) + step * dot
    else:  # contiguous rows of R labels: 16-byte loads at R = 8
        labels = tl.load(LAB + n[:, :, None] * R + c[None, None, :], mask=n_ok[:, :, None] & (c < R)[None, None, :],
                         other=0.0)
        score = tl.sum(labels.to(tl.float32) * q[None, None, :], axis=2)
    return score


@triton.jit
def _prior_at(PRIOR, kv, n, n_ok, N, GROUP: tl.constexpr, BUCKETS: tl.constexpr, EXACT: tl.constexpr,
              EXACT_LOG: tl.constexpr):
    """GROUP x the position prior (compress.attention.calibration.prior: a value per distance bucket and KV head) of tokens
    n for the query at N - 1, as the evaluation path adds it to each query head's label score."""
    delta = N - 1 - n
    log2 = ((tl.maximum(delta, 1).to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # exact < 2^24
    bucket = tl.where(delta < EXACT, delta, tl.minimum(EXACT + log2 - EXACT_LOG, BUCKETS - 2))
    bucket = tl.where(n == 0, BUCKETS - 1, bucket)  # the first key: the sink bucket
    return GROUP * tl.load(PRIOR + kv * BUCKETS + bucket, mask=n_ok, other=0.0)


@triton.jit
def _score_kernel(Q, LAB, HEAVY, PRIOR, S, STATE, COUNTS, CAND, N, stride_qb, stride_qh, stride_lb, stride_lh,
                  stride_plane, stride_sb, stride_sh, KVH: tl.constexpr, GROUP: tl.constexpr, R: tl.constexpr,
                  R_PAD: tl.constexpr, PACKED: tl.constexpr, WORDS: tl.constexpr, HAS_PRIOR: tl.constexpr,
                  BUCKETS: tl.constexpr, EXACT: tl.constexpr, EXACT_LOG: tl.constexpr, ROWS: tl.constexpr,
                  WIDTH: tl.constexpr, CHUNK, FILTER: tl.constexpr):
    """Blocks of ROWS x WIDTH tokens (ROWS = the warps when FILTER: one tile row a warp)."""
    row = tl.program_id(0)
    b = (row // KVH).to(tl.int64)  # a large cache's offsets pass 2^31 elements
    kv = row % KVH
    q, c = _query_labels(Q, HEAVY, b, kv, stride_qb, stride_qh, GROUP, R, R_PAD)
    base = LAB + b * stride_lb + kv * stride_lh
    g = tl.arange(0, ROWS)
    if FILTER:  # each tile row's own candidate slots (no atomics; a warp's own prefix sums: no cross-warp scan)
        threshold = tl.load(STATE + row * 2)
        program = row * tl.num_programs(1) + tl.program_id(1)
        slots = CAND + program.to(tl.int64) * 2 * CHUNK + g[:, None] * (CHUNK // ROWS)  # (programs, 2, CHUNK)
        held = tl.zeros([ROWS], dtype=tl.int32)
    start = tl.program_id(1) * CHUNK
    end = tl.minimum(start + CHUNK, N)
    while start < end:  # a while loop: the Triton interpreter cannot range() to a runtime bound under NumPy 2
        n = tl.multiple_of(start, ROWS * WIDTH) + g[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :]
        n_ok = n < N
        score = _scores_at(base, n, n_ok, q, c, stride_plane, R, PACKED, WORDS)
        if HAS_PRIOR:
            score += _prior_at(PRIOR, kv, n, n_ok, N, GROUP, BUCKETS, EXACT, EXACT_LOG)
        tl.store(S + b * stride_sb + kv * stride_sh + n, score, mask=n_ok)
        if FILTER:  # the candidates of select.threshold_top: float16 keys reaching the row's threshold
            key = order_key(score)
            take = (n_ok & (key >= threshold)).to(tl.int32)
            slot = held[:, None] + tl.cumsum(take, axis=1) - 1  # a tile row holds at most CHUNK / ROWS
            tl.store(slots + slot, n, mask=take > 0)
            tl.store(slots + CHUNK + slot, key, mask=take > 0)
            held += tl.sum(take, axis=1)
        start += ROWS * WIDTH
    if FILTER:
        tl.store(COUNTS + program * ROWS + g, held)


@triton.jit
def _threshold_kernel(Q, LAB, HEAVY, PRIOR, STATE, N, RUN_STRIDE, K, stride_qb, stride_qh, stride_lb, stride_lh,
                      stride_plane, KVH: tl.constexpr, GROUP: tl.constexpr, R: tl.constexpr, R_PAD: tl.constexpr,
                      PACKED: tl.constexpr, WORDS: tl.constexpr, HAS_PRIOR: tl.constexpr, BUCKETS: tl.constexpr,
                      EXACT: tl.constexpr, EXACT_LOG: tl.constexpr, SAMPLE: tl.constexpr, RUN: tl.constexpr):
    row = tl.program_id(0)
    b = (row // KVH).to(tl.int64)
    kv = row % KVH
    q, c = _query_labels(Q, HEAVY, b, kv, stride_qb, stride_qh, GROUP, R, R_PAD)
    i = tl.arange(0, SAMPLE)
    n = ((i // RUN) * RUN_STRIDE + i % RUN)[None, :]  # runs of RUN neighbours: whole sectors of the label planes
    n_ok = n < N
    score = _scores_at(LAB + b * stride_lb + kv * stride_lh, n, n_ok, q, c, stride_plane, R, PACKED, WORDS)
    if HAS_PRIOR:
        score += _prior_at(PRIOR, kv, n, n_ok, N, GROUP, BUCKETS, EXACT, EXACT_LOG)
    tl.store(STATE + row * 2, kth_largest_key(tl.reshape(tl.where(n_ok, order_key(score), -1), [SAMPLE]), K))


def _launch_args(query, labels, heavy, prior):
    b, h, _ = query.shape
    kvh = labels.shape[1]
    r = heavy.shape[-1]
    return dict(KVH=kvh, GROUP=h // kvh, R=r, R_PAD=max(triton.next_power_of_2(r), 2),
                PACKED=labels.dtype == torch.int32, WORDS=triton.cdiv(r, 8), HAS_PRIOR=prior is not None,
                BUCKETS=BUCKETS, EXACT=EXACT, EXACT_LOG=EXACT.bit_length() - 1)


def score_labels(query: torch.Tensor, labels: torch.Tensor, heavy: torch.Tensor, dtype=torch.float32,
                 plan: ThresholdPlan | None = None, block_n: int = 1024, programs: int = 4096,
                 num_warps: int = 4, prior: torch.Tensor | None = None) -> torch.Tensor:
    """(b, kv_heads, n) label scores (accumulated in float32, stored as `dtype`), summed over the query heads
    of each KV head; `labels` in either format of label_cache. `plan` (select.ThresholdPlan; float16 scores):
    also estimate each row's threshold from a sample and count the tokens reaching it, per program. `prior`
    (kv_heads, BUCKETS) float32: add each query head's position prior for the query at position n - 1."""
    b = query.shape[0]
    if labels.stride(-1) != 1 or (labels.dtype != torch.int32 and labels.stride(-2) != labels.shape[-1]):
        labels = labels.contiguous()  # else a view of a longer cache (decoding) is read in place, not copied
    kvh, n = labels.shape[1], token_count(labels)
    heavy = heavy.to(query.device, torch.int32).contiguous()
    scores = torch.empty(b, kvh, n, device=query.device, dtype=dtype)
    strides = (query.stride(0), query.stride(1), labels.stride(0), labels.stride(1), labels.stride(2))
    meta = _launch_args(query, labels, heavy, prior)
    prior = heavy if prior is None else prior.to(query.device, torch.float32).contiguous()  # unread when None
    if plan is not None and plan.sample:
        _threshold_kernel[(b * kvh,)](query, labels, heavy, prior, plan.state, n, plan.run_stride, plan.rank, *strides,
                                      **meta, SAMPLE=plan.sample, RUN=plan.run, num_warps=4)
    per_row, chunk = stretch(b * kvh, n, block_n, programs, None if plan is None else MAX_PROGRAMS)
    rows = num_warps if plan is not None else 1
    if plan is not None:  # a tile row a warp: its candidates at most chunk / warps, its own slots
        plan.counts = torch.empty(b * kvh, per_row * rows, device=query.device, dtype=torch.int32)
        plan.candidates = torch.empty(b * kvh, per_row, 2, chunk, device=query.device, dtype=torch.int32)
    _score_kernel[(b * kvh, per_row)](query, labels, heavy, prior, scores, *((scores,) * 3 if plan is None else
                                                                     (plan.state, plan.counts, plan.candidates)),
                                      n, *strides, scores.stride(0), scores.stride(1), **meta, ROWS=rows,
                                      WIDTH=block_n // rows, CHUNK=chunk, FILTER=plan is not None,
                                      num_warps=num_warps)
    return scores
