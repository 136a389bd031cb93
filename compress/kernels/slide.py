"""SlideSparse-style decomposition: a (2N−2):2N weight as a 2:4 weight over overlapping windows.

Each group of 2N columns is covered by N−1 windows of 4 columns with stride 2 (for 6:8: columns 0–3,
2–5, 4–7). Every kept weight goes to exactly one window that contains it, at most 2 per window, so the
expanded weight (rows × (K/2N)·(N−1)·4) is 2:4 and hardware 2:4 kernels can run it. The activations
are "lifted" to match: each window reads its 4 columns of x. The product is unchanged:
  x · Wᵀ = lift(x) · expandedᵀ.
"""
from __future__ import annotations

import torch

__all__ = ["slide_windows", "slide_expand", "lift_index", "lift"]


def slide_windows(m: int) -> int:
    if m % 2 or m < 4:
        raise ValueError(f"slide decomposition needs an even group size M >= 4, got {m}")
    return m // 2 - 1


def lift_index(cols: int, m: int, device=None) -> torch.Tensor:
    """Column of x read by each column of the expanded weight."""
    windows = slide_windows(m)
    within = (torch.arange(windows)[:, None] * 2 + torch.arange(4)[None]).reshape(-1)  # (windows·4,)
    starts = torch.arange(0, cols, m)[:, None]
    return (starts + within[None]).reshape(-1).to(device)


def lift(x: torch.Tensor, m: int) -> torch.Tensor:
    return x.index_select(-1, lift_index(x.shape[-1], m, x.device))


def slide_expand(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Expand a weight with at most M−2 nonzeros per M-group into a 2:4 weight over the lifted columns."""
    windows = slide_windows(m)
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // m, m)
    kept = groups != 0
    if bool((kept.sum(-1) > m - 2).any()):
        raise ValueError(f"weight has more than {m - 2} nonzeros in some group of {m}")
    expanded = torch.zeros(rows, cols // m, windows, 4, dtype=weight.dtype, device=weight.device)
    # Greedy left to right: each window takes the leftmost 2 kept columns still unplaced in its span;
    # by induction every kept column left of the next window's span is placed before it starts.
    taken = torch.zeros_like(kept)
    for w in range(windows):
        room = torch.full((rows, cols // m), 2, device=weight.device)
        for position in range(2 * w, 2 * w + 4):
            take = kept[..., position] & ~taken[..., position] & (room > 0)
            expanded[..., w, position - 2 * w] = torch.where(take, groups[..., position], 0)
            taken[..., position] |= take
            room -= take.to(room.dtype)
    if not bool((taken == kept).all()):
        raise AssertionError("slide decomposition left a weight unplaced")  # cannot happen for ≤ M−2 kept
    return expanded.reshape(rows, -1)
