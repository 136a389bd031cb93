"""Sparsity patterns and the masks that realise them.

N:M keeps N of every M consecutive weights along the input dimension: 2:4 keeps 2 of 4 (50% zeros),
6:8 keeps 6 of 8 (25% zeros). Unstructured sparsity removes a fraction of each output row.

Ties: entries are ranked by score, highest first, and among equal scores the lower index (the earlier
column) ranks higher, so it is the one kept. Only entries equal to the k-th largest score are decided by
index, so the mask is the one any top-k gives wherever the boundary scores differ.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from compress.errors import BadInput

__all__ = ["Pattern", "parse_pattern", "keep_top", "nm_mask", "row_mask", "mask_for"]


@dataclass(frozen=True)
class Pattern:
    n: int | None = None  # kept per group (N:M)
    m: int | None = None  # group size (N:M)
    sparsity: float | None = None  # fraction removed per row (unstructured)

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def zero_fraction(self) -> float:
        return 1.0 - self.n / self.m if self.is_nm else float(self.sparsity)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"unstructured {self.sparsity:g}"

    def check_fits(self, in_features: int, name: str = "layer") -> None:
        if self.is_nm and in_features % self.m:
            raise BadInput(f"pattern {self}: M={self.m} does not divide the input dimension {in_features} of {name}",
                           key="pattern")

    def to_dict(self) -> dict:
        if self.is_nm:
            return {"type": "n:m", "n": self.n, "m": self.m, "zero_fraction": self.zero_fraction}
        return {"type": "unstructured", "sparsity": self.sparsity}


def parse_pattern(pattern: str | None = None, sparsity: float | None = None) -> Pattern:
    """Parse "2:4" or an unstructured sparsity in (0, 1); exactly one of the two."""
    if (pattern is None) == (sparsity is None):
        raise BadInput("give exactly one of pattern (N:M) or sparsity (a fraction)", key="pattern")
    if sparsity is not None:
        if not 0.0 < sparsity < 1.0:
            raise BadInput(f"sparsity must be between 0 and 1 (exclusive), got {sparsity}", key="sparsity")
        return Pattern(sparsity=float(sparsity))
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if not match:
        raise BadInput(f"bad pattern {pattern!r}: expected N:M such as 2:4, 4:8 or 6:8", key="pattern")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise BadInput(f"bad pattern {pattern!r}: need 0 < N < M (N:M keeps N of every M weights)", key="pattern")
    return Pattern(n=n, m=m)


def keep_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """True for the k highest entries along the last dim; equal scores go to the lower index (docstring).
    A stable descending sort gives that order directly, at the cost of one top-k (measured)."""
    size = score.shape[-1]
    if k <= 0 or k >= size:
        return torch.full_like(score, k > 0, dtype=torch.bool)
    order = score.argsort(dim=-1, descending=True, stable=True)[..., :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, order, True)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest-scoring of every m consecutive entries along the last dim (True = keep)."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    return keep_top(groups, n).reshape(rows, cols)


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the round(sparsity * cols) lowest-scoring entries of each row (True = keep)."""
    cols = score.shape[-1]
    drop = int(round(sparsity * cols))
    return keep_top(score, cols - drop)


def mask_for(score: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    if pattern.is_nm:
        return nm_mask(score, pattern.n, pattern.m)
    return row_mask(score, pattern.sparsity)
