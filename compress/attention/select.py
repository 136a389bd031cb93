"""Top-T token selection on the GPU: torch.topk, or an exact two-digit radix select over float16 scores.

Radix select: the scoring kernel (compress.attention.labels) already holds each score in registers: it stores
it as float16 and counts the high byte of its order-preserving 16-bit key into a per-row histogram. A second
pass counts the low byte among the tokens of the high byte that holds the T-th largest key; the T-th largest
key K is then known exactly, with how many tokens equal to K to take. A last pass writes the indices of every
token above K and of the first such equal ones (ties in float16 taken in no set order). Scores are read twice
after being written once: 6 bytes a token. Every pass loops over a long stretch of its row, counts in
registers and adds to the row's counters once (one atomic per 256 bins per program; a program per block of
tokens made the atomics cost more than the select saved, measured on one H200).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["BINS", "order_key", "new_counters", "stretch", "select_top", "radix_top"]

BINS = 256  # one digit: a byte of the 16-bit key
COUNTERS = 3 * BINS  # per row: high-byte histogram, low-byte histogram, two fill counts


def new_counters(rows: int, device) -> torch.Tensor:
    """Zeroed (rows, COUNTERS) int32: what the scoring kernel and radix_top count into."""
    return torch.zeros(rows, COUNTERS, device=device, dtype=torch.int32)


def stretch(rows: int, n: int, block: int, programs: int = 2048) -> tuple[int, int]:
    """(programs per row, tokens per program): about `programs` in all, each a whole number of blocks."""
    per_row = max(1, min(triton.cdiv(n, block), triton.cdiv(programs, rows)))
    chunk = triton.cdiv(triton.cdiv(n, per_row), block) * block
    return triton.cdiv(n, chunk), chunk


def select_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """(b, kv_heads, min(budget, n)) int32 token indices of the highest scores (all tokens if n ≤ budget)."""
    b, kvh, n = scores.shape
    if n <= budget:
        return torch.arange(n, device=scores.device, dtype=torch.int32).expand(b, kvh, n)
    return scores.topk(budget, dim=-1, sorted=False).indices.to(torch.int32)


@triton.jit
def order_key(score):
    """float16 score -> int32 in [0, 65535], ordered as the scores are."""
    bits = score.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return tl.where(bits >= 0x8000, bits ^ 0xFFFF, bits | 0x8000)


@triton.jit
def _boundary(HIST, need):
    """The digit (from the top) where the count of keys reaches `need`, and what is still needed inside it."""
    rank = tl.arange(0, 256)
    reached = tl.cumsum(tl.load(HIST + 255 - rank), axis=0)  # digit 255 first
    position = tl.sum((reached < need).to(tl.int32), axis=0)
    above = tl.max(tl.where(reached < need, reached, 0), axis=0)
    return 255 - position, need - above


@triton.jit
def _block_keys(S, start, N, BLOCK: tl.constexpr):
    n = tl.multiple_of(start, BLOCK) + tl.arange(0, BLOCK)
    valid = n < N
    return n, valid, order_key(tl.load(S + n, mask=valid, other=0.0))


@triton.jit
def _low_byte_histogram(S, COUNT, N, T, stride_row, BLOCK: tl.constexpr, CHUNK):
    row = tl.program_id(0)
    counters = COUNT + row * (3 * 256)
    high, _ = _boundary(counters, T)
    hist = tl.zeros([256], dtype=tl.int32)
    start = tl.program_id(1) * CHUNK
    end = tl.minimum(start + CHUNK, N)
    while start < end:  # not range(): the Triton interpreter cannot loop to a runtime bound under NumPy 2
        n, valid, key = _block_keys(S + row * stride_row, start, N, BLOCK)
        hist += tl.histogram(key & 255, 256, mask=valid & ((key >> 8) == high))
        start += BLOCK
    tl.atomic_add(counters + 256 + tl.arange(0, 256), hist)


@triton.jit
def _compact(S, COUNT, IDX, N, T, stride_row, BLOCK: tl.constexpr, CHUNK):
    row = tl.program_id(0)
    counters = COUNT + row * (3 * 256)
    high, need = _boundary(counters, T)
    low, ties = _boundary(counters + 256, need)  # ties: tokens equal to the threshold still to take
    threshold = high * 256 + low
    start = tl.program_id(1) * CHUNK
    end = tl.minimum(start + CHUNK, N)
    while start < end:  # not range(): the Triton interpreter cannot loop to a runtime bound under NumPy 2
        n, valid, key = _block_keys(S + row * stride_row, start, N, BLOCK)
        above = valid & (key > threshold)
        equal = valid & (key == threshold)
        base = tl.atomic_add(counters + 512, tl.sum(above.to(tl.int32), axis=0))
        slot = base + tl.cumsum(above.to(tl.int32), axis=0) - 1
        tl.store(IDX + row * T + slot, n, mask=above)
        base_equal = tl.atomic_add(counters + 513, tl.sum(equal.to(tl.int32), axis=0))
        slot_equal = base_equal + tl.cumsum(equal.to(tl.int32), axis=0) - 1
        tl.store(IDX + row * T + (T - ties) + slot_equal, n, mask=equal & (slot_equal < ties))
        start += BLOCK


def radix_top(scores: torch.Tensor, counters: torch.Tensor, budget: int, block: int = 2048,
              programs: int = 2048) -> torch.Tensor:
    """(b, kv_heads, budget) int32 indices of the `budget` largest float16 scores per row (n > budget), given
    `counters` (new_counters) holding the histogram of their keys' high bytes the scoring kernel counted."""
    b, kvh, n = scores.shape
    rows = b * kvh
    flat = scores.view(rows, n)
    index = torch.empty(rows, budget, device=scores.device, dtype=torch.int32)
    per_row, chunk = stretch(rows, n, block, programs)
    _low_byte_histogram[(rows, per_row)](flat, counters, n, budget, flat.stride(0), BLOCK=block, CHUNK=chunk)
    _compact[(rows, per_row)](flat, counters, index, n, budget, flat.stride(0), BLOCK=block, CHUNK=chunk)
    return index.view(b, kvh, budget)
