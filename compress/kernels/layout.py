"""Row-major copy of a transposed matrix, tiled through shared memory (Triton).

cuSPARSELt returns the product feature-major (out × tokens); the model wants (tokens × out) rows. A plain
`.t().contiguous()` reads one side with a large stride; the tiled copy reads and writes whole lines.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["transpose_copy"]


@triton.jit
def _transpose_kernel(src_ptr, dst_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rr = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rr[:, None] < R) & (rc[None, :] < C)
    tile = tl.load(src_ptr + rr[:, None] * C + rc[None, :], mask=ok)
    tl.store(dst_ptr + rc[:, None] * R + rr[None, :], tl.trans(tile), mask=tl.trans(ok))


def transpose_copy(src: torch.Tensor) -> torch.Tensor:
    """src (R × C, contiguous) → its transpose as a contiguous (C × R) tensor."""
    if not src.is_contiguous() or src.dim() != 2:
        raise ValueError("transpose_copy takes a contiguous matrix")
    rows, cols = src.shape
    dst = torch.empty(cols, rows, device=src.device, dtype=src.dtype)
    grid = (triton.cdiv(rows, 64), triton.cdiv(cols, 64))
    _transpose_kernel[grid](src, dst, rows, cols, BLOCK_R=64, BLOCK_C=64, num_warps=4)
    return dst
