"""Top-T token selection on the GPU: torch.topk, or an exact threshold select over float16 scores (Triton).

Threshold select, for T of n tokens per row:
  1. a sample of the row (runs of 8 neighbours spread over it) is scored first and its float16 keys give a
     threshold expected to keep about 1.5 T tokens (compress.attention.decode_kernels.labels._threshold_kernel);
  2. each warp of a scoring program writes the tokens of its share whose key reaches the threshold (index
     and key) to slots of its own, and their number (no atomics, no scan across warps, the scores never read
     back);
  3. one program per row reads the slots of its row as one list (a binary search over the counts' running
     sums places each candidate), finds the T-th largest key among them, held in registers, by a bitwise
     search from the top bit, and writes the tokens above it and the first of those equal to it.
If a row's candidates are fewer than T or more than the list holds (an unlucky sample; many ties), step 3
searches the whole row's stored scores instead (slower; the result is the same). Ties in float16 are taken
in no set order. A two-digit radix select (a 256-bin histogram of every score, twice) was slower than
torch.topk on one H200: Triton's histogram costs a few instructions per element and bin bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from compress.attention.decode_kernels.decode_torch import select_top  # noqa: F401 (re-exported)

__all__ = ["MAX_PROGRAMS", "ThresholdPlan", "threshold_plan", "order_key", "kth_largest_key", "stretch", "select_top",
           "threshold_top"]

SAMPLE, RUN = 2048, 8  # tokens a threshold is estimated from, in runs of neighbours
MARGIN = 1.5  # candidates expected, in units of T: a shortfall below T is about 4.6 standard deviations away
MAX_PROGRAMS = 32  # scoring programs per row when they write candidates: the search walks their counts


@dataclass
class ThresholdPlan:
    """Launch settings and buffers of one threshold select of at most `capacity` candidates per row."""
    rank: int  # the sample's key of this rank (from the top) is the threshold
    sample: int  # 0: every token is a candidate (no threshold)
    run_stride: int
    capacity: int
    state: torch.Tensor  # (rows, 2) int32: threshold key, candidates found
    run: int = RUN
    counts: torch.Tensor | None = None  # (rows, programs x warps) int32: candidates each warp found
    candidates: torch.Tensor | None = None  # (rows, programs, 2, chunk) int32: token indices, keys; a warp's
    # slots are its program's chunk / warps tokens


def threshold_plan(rows: int, n: int, budget: int, device) -> ThresholdPlan:
    capacity = triton.next_power_of_2(max(16, 2 * budget))
    if capacity >= n:  # every token fits: no threshold (a key of 0 lets every token in)
        state = torch.zeros(rows, 2, device=device, dtype=torch.int32)
        return ThresholdPlan(0, 0, 0, triton.next_power_of_2(n), state)
    state = torch.empty(rows, 2, device=device, dtype=torch.int32)  # the threshold kernel writes it
    sample = min(SAMPLE, triton.next_power_of_2(n) // 2)
    runs = sample // RUN
    rank = min(sample, triton.cdiv(int(MARGIN * budget * sample), n))
    return ThresholdPlan(rank, sample, n // runs, capacity, state)


def stretch(rows: int, n: int, block: int, programs: int = 4096, most: int | None = None) -> tuple[int, int]:
    """(programs per row (at most `most`), tokens per program): about `programs` in all, each a whole number
    of blocks."""
    per_row = max(1, min(triton.cdiv(n, block), triton.cdiv(programs, rows), most or n))
    chunk = triton.cdiv(triton.cdiv(n, per_row), block) * block
    return triton.cdiv(n, chunk), chunk


@triton.jit
def order_key(score):
    """float16 score -> int32 in [0, 65535], ordered as the scores are."""
    bits = score.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return tl.where(bits >= 0x8000, bits ^ 0xFFFF, bits | 0x8000)


@triton.jit
def kth_largest_key(keys, k):
    """The k-th largest of `keys` (int32 in [0, 65535]; -1 for none): the largest value that k keys reach."""
    found = tl.sum(keys * 0, axis=0)
    for i in tl.static_range(16):
        trial = found | (1 << (15 - i))
        found = tl.where(tl.sum((keys >= trial).to(tl.int32), axis=0) >= k, trial, found)
    return found


@triton.jit
def _row_keys(S, start, N, BLOCK: tl.constexpr):
    n = tl.multiple_of(start, BLOCK) + tl.arange(0, BLOCK)
    valid = n < N
    return n, tl.where(valid, order_key(tl.load(S + n, mask=valid, other=0.0)), -1)


@triton.jit
def _write_top(IDX, T, n, keys, key, above_before, equal_before, ties):
    """Write tokens `n` whose key is above `key`, then the first `ties` equal to it, after those before."""
    above = (keys > key).to(tl.int32)
    equal = (keys == key).to(tl.int32)
    tl.store(IDX + above_before + tl.cumsum(above, axis=0) - 1, n, mask=above > 0)
    slot = equal_before + tl.cumsum(equal, axis=0) - 1
    tl.store(IDX + (T - ties) + slot, n, mask=(equal > 0) & (slot < ties))
    return above_before + tl.sum(above, axis=0), equal_before + tl.sum(equal, axis=0)


@triton.jit
def _slot_positions(ENDS, CAND, i, CHUNK, SHARES: tl.constexpr, LEVELS: tl.constexpr, WARPS: tl.constexpr):
    """Where the row's candidate i sits: the share (a scoring warp's slots, in program order) whose running
    sum of counts (ENDS, SHARES = 2^LEVELS of them) first passes i, at i minus the sums before it."""
    share = i * 0
    for level in tl.static_range(LEVELS):  # a binary search: the shares ending at or before i
        half = SHARES >> (level + 1)
        share = tl.where(tl.load(ENDS + share + half - 1) <= i, share + half, share)
    before = tl.load(ENDS + share - 1, mask=share > 0, other=0)
    return CAND + (share // WARPS) * 2 * CHUNK + (share % WARPS) * (CHUNK // WARPS) + (i - before)


@triton.jit
def _finish_kernel(S, STATE, COUNTS, ENDS, CAND, IDX, N, T, CAP, CHUNK, stride_row, PROGRAMS, SHARES: tl.constexpr,
                   LEVELS: tl.constexpr, WARPS: tl.constexpr, CAP_PAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    s = tl.arange(0, SHARES)
    ends = tl.cumsum(tl.load(COUNTS + row * PROGRAMS * WARPS + s, mask=s < PROGRAMS * WARPS, other=0), axis=0)
    found = tl.max(ends, axis=0)
    tl.store(STATE + row * 2 + 1, found)
    out = IDX + row * T
    scores = S + row * stride_row
    if (found >= T) & (found <= CAP):  # (names differ from the other branch's: Triton merges same names)
        tl.store(ENDS + row * SHARES + s, ends)
        tl.debug_barrier()  # the running sums, read back by every warp below
        i = tl.arange(0, CAP_PAD)
        slots = CAND + row.to(tl.int64) * PROGRAMS * 2 * CHUNK
        held_keys = tl.load(_slot_positions(ENDS + row * SHARES, slots, i, CHUNK, SHARES, LEVELS, WARPS) + CHUNK,
                            mask=i < found, other=-1)
        kth = kth_largest_key(held_keys, T)
        held = tl.load(_slot_positions(ENDS + row * SHARES, slots, i, CHUNK, SHARES, LEVELS, WARPS), mask=i < found,
                       other=0)  # placed again after the search: fewer registers
        _write_top(out, T, held, held_keys, kth, 0, 0, T - tl.sum((held_keys > kth).to(tl.int32), axis=0))
    else:  # the sample's threshold missed: search the whole row, a block at a time
        key = found * 0
        for bit in tl.static_range(16):
            trial = key | (1 << (15 - bit))
            reach = found * 0
            start = found * 0
            while start < N:
                _, keys = _row_keys(scores, start, N, BLOCK)
                reach += tl.sum((keys >= trial).to(tl.int32), axis=0)
                start += BLOCK
            key = tl.where(reach >= T, trial, key)
        above = found * 0
        start = found * 0
        while start < N:
            _, keys = _row_keys(scores, start, N, BLOCK)
            above += tl.sum((keys > key).to(tl.int32), axis=0)
            start += BLOCK
        above_before = found * 0
        equal_before = found * 0
        start = found * 0
        while start < N:
            n, keys = _row_keys(scores, start, N, BLOCK)
            above_before, equal_before = _write_top(out, T, n, keys, key, above_before, equal_before, T - above)
            start += BLOCK


def threshold_top(scores: torch.Tensor, plan: ThresholdPlan, budget: int, block: int = 1024) -> torch.Tensor:
    """(b, kv_heads, budget) int32 indices of the `budget` largest float16 scores per row (n > budget), given
    the threshold and the candidates the scoring kernel left in `plan`."""
    b, kvh, n = scores.shape
    rows = b * kvh
    flat = scores.view(rows, n)
    index = torch.empty(rows, budget, device=scores.device, dtype=torch.int32)
    _, programs, _, chunk = plan.candidates.shape
    warps = plan.counts.shape[1] // programs
    shares = triton.next_power_of_2(programs * warps)
    ends = torch.empty(rows, shares, device=scores.device, dtype=torch.int32)
    _finish_kernel[(rows,)](flat, plan.state, plan.counts, ends, plan.candidates, index, n, budget, plan.capacity,
                            chunk, flat.stride(0), programs, SHARES=shares,
                            LEVELS=shares.bit_length() - 1, WARPS=warps, CAP_PAD=plan.capacity,
                            BLOCK=block, num_warps=search_warps(rows, plan.capacity))
    return index.view(b, kvh, budget)


def search_warps(rows: int, capacity: int) -> int:
    """Warps of a row's search, measured on one H200: at 8192 candidates 8 with 512 rows, 16 with 32 rows
    (few rows leave most SMs idle: more warps per row pay)."""
    return min(32, max(16 if rows < 128 else 4, capacity // 1024))
