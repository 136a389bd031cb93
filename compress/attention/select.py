"""Exact top-T token selection on the GPU by a two-digit radix select over float16 label scores.

The scoring kernel (compress.attention.decode) already holds each score in registers: it stores it as
float16 and counts the high byte of its order-preserving 16-bit key into a per-row histogram. One small
kernel finds the byte holding the T-th largest key; a second pass counts the low byte among the tokens of
that high byte; the T-th largest key K is then known exactly, with how many tokens equal to K to take.
A last pass writes the indices of every token above K and of the first such equal ones (ties in float16
taken in no set order). Scores are read twice after being written once: 6 bytes a token, against
torch.topk's several passes over float32 scores.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["radix_top", "BINS"]

BINS = 512  # 256 digits, and an overflow bin (256..511) for tokens a pass must not count


@triton.jit
def order_key(score):
    """float16 score -> int32 in [0, 65535], ordered as the scores are."""
    bits = score.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return tl.where(bits >= 0x8000, bits ^ 0xFFFF, bits | 0x8000)


@triton.jit
def _find_digit(HIST, NEED, DIGIT, pass_index, BINS: tl.constexpr):
    """Per row: the digit (from the top) where the count of keys reaches NEED; NEED becomes what is still
    needed from inside that digit."""
    row = tl.program_id(0)
    rank = tl.arange(0, 256)
    counts = tl.load(HIST + row * BINS + 255 - rank)  # digit 255 first
    reached = tl.cumsum(counts, axis=0)
    need = tl.load(NEED + row)
    position = tl.sum((reached < need).to(tl.int32), axis=0)
    above = tl.max(tl.where(reached < need, reached, 0), axis=0)
    tl.store(DIGIT + row * 2 + pass_index, 255 - position)
    tl.store(NEED + row, need - above)


@triton.jit
def _low_byte_histogram(S, HIST, DIGIT, N, stride_row, BINS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = n < N
    key = order_key(tl.load(S + row * stride_row + n, mask=valid, other=0.0))
    high = tl.load(DIGIT + row * 2)
    digit = tl.where(valid & ((key >> 8) == high), key & 255, BINS - 1)
    tl.atomic_add(HIST + row * BINS + tl.arange(0, BINS), tl.histogram(digit, BINS))


@triton.jit
def _compact(S, DIGIT, NEED, COUNT, IDX, N, T, stride_row, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = n < N
    key = order_key(tl.load(S + row * stride_row + n, mask=valid, other=0.0))
    threshold = tl.load(DIGIT + row * 2) * 256 + tl.load(DIGIT + row * 2 + 1)
    ties = tl.load(NEED + row)  # tokens equal to the threshold still to take
    above = valid & (key > threshold)
    equal = valid & (key == threshold)
    base = tl.atomic_add(COUNT + row * 2, tl.sum(above.to(tl.int32), axis=0))
    slot = base + tl.cumsum(above.to(tl.int32), axis=0) - 1
    tl.store(IDX + row * T + slot, n, mask=above)
    base_equal = tl.atomic_add(COUNT + row * 2 + 1, tl.sum(equal.to(tl.int32), axis=0))
    slot_equal = base_equal + tl.cumsum(equal.to(tl.int32), axis=0) - 1
    tl.store(IDX + row * T + (T - ties) + slot_equal, n, mask=equal & (slot_equal < ties))


def radix_top(scores: torch.Tensor, high_histogram: torch.Tensor, budget: int, block: int = 1024) -> torch.Tensor:
    """(b, kv_heads, budget) int32 indices of the `budget` largest float16 scores per row, given the
    histogram of their keys' high bytes (rows × BINS, int32) the scoring kernel counted."""
    b, kvh, n = scores.shape
    rows = b * kvh
    flat = scores.view(rows, n)
    need = torch.full((rows,), budget, device=scores.device, dtype=torch.int32)
    digit = torch.empty(rows, 2, device=scores.device, dtype=torch.int32)
    _find_digit[(rows,)](high_histogram, need, digit, 0, BINS=BINS)
    low = torch.zeros(rows, BINS, device=scores.device, dtype=torch.int32)
    grid = (rows, triton.cdiv(n, block))
    _low_byte_histogram[grid](flat, low, digit, n, flat.stride(0), BINS=BINS, BLOCK=block)
    _find_digit[(rows,)](low, need, digit, 1, BINS=BINS)
    count = torch.zeros(rows, 2, device=scores.device, dtype=torch.int32)
    index = torch.empty(rows, budget, device=scores.device, dtype=torch.int32)
    _compact[grid](flat, digit, need, count, index, n, budget, flat.stride(0), BLOCK=block)
    return index.view(b, kvh, budget)
