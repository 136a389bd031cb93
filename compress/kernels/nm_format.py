"""The compressed N:M weight format: kept values plus a packed bit mask.

A weight (rows × K) that keeps exactly N of every M along K is stored as
  values: (rows, K·N/M), the kept weights in row-major order, in the weight's dtype;
  mask:   (rows, ceil(K/8)) uint8, bit j%8 of byte j//8 set when column j is kept (little-endian bits).
For 2:4 in fp16 that is K bytes + K/8 bytes per row, 56.25% of dense.
"""
from __future__ import annotations

import torch

__all__ = ["pack_nm", "unpack_nm", "check_nm"]

_BITS = 2 ** torch.arange(8, dtype=torch.int32)


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    rows, cols = weight.shape
    return cols % m == 0 and bool(((weight != 0).view(rows, cols // m, m).sum(-1) <= n).all())


def pack_nm(weight: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, packed mask) of a weight with at most N nonzeros in every M-group.

    Groups with fewer than N nonzeros keep some zeros as values, so every row has exactly K·N/M values.
    """
    rows, cols = weight.shape
    if not check_nm(weight, n, m):
        raise ValueError(f"weight is not {n}:{m} sparse along its input dimension")
    groups = weight.reshape(rows, cols // m, m)
    # keep the nonzeros, topped up with the leftmost zeros: rank nonzeros first, then by position
    order = (groups == 0).to(torch.int32) * m + torch.arange(m, device=weight.device)
    kept = torch.zeros_like(groups, dtype=torch.bool)
    kept.scatter_(2, order.topk(n, dim=2, largest=False).indices, True)
    mask = kept.reshape(rows, cols)
    values = weight[mask].reshape(rows, cols * n // m)
    padded = torch.nn.functional.pad(mask, (0, (-cols) % 8)).reshape(rows, -1, 8).to(torch.int32)
    return values.contiguous(), (padded * _BITS.to(weight.device)).sum(-1).to(torch.uint8)


def unpack_nm(values: torch.Tensor, packed_mask: torch.Tensor, cols: int) -> torch.Tensor:
    """The dense weight (zeros in place) from pack_nm's output."""
    rows = values.shape[0]
    bits = packed_mask.to(torch.int32).unsqueeze(-1).bitwise_and(_BITS.to(packed_mask.device)).ne(0)
    mask = bits.reshape(rows, -1)[:, :cols]
    dense = torch.zeros(rows, cols, dtype=values.dtype, device=values.device)
    dense[mask] = values.reshape(-1)
    return dense
