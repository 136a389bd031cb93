"""SparseLinear: a Linear whose weight is held in the compressed N:M format.

forward computes x·Wᵀ (+ b). The stored weight may be in permuted input order (`perm`): then the
activations are gathered first, x[..., perm]. On the CPU, and wherever no sparse kernel applies, the
weight is unpacked once and cached; GPU kernels plug in through `compress.kernels` backends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.kernels.nm_format import pack_nm, unpack_nm

__all__ = ["SparseLinear"]


class SparseLinear(nn.Module):
    def __init__(self, values: torch.Tensor, mask: torch.Tensor, in_features: int, n: int, m: int,
                 bias: torch.Tensor | None = None, perm: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.n, self.m = in_features, values.shape[0], n, m
        self.register_buffer("values", values)
        self.register_buffer("mask", mask)
        self.register_buffer("perm", perm)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self._dense: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, n: int, m: int, perm: torch.Tensor | None = None) -> "SparseLinear":
        weight = linear.weight.data if perm is None else linear.weight.data[:, perm]
        values, mask = pack_nm(weight, n, m)
        bias = linear.bias.data.clone() if linear.bias is not None else None
        return cls(values, mask, linear.in_features, n, m, bias, None if perm is None else perm.clone())

    def stored_weight(self) -> torch.Tensor:
        """The dense weight in stored (possibly permuted) order, zeros in place."""
        if self._dense is None or self._dense.device != self.values.device:
            self._dense = unpack_nm(self.values, self.mask, self.in_features)
        return self._dense

    def dense_weight(self) -> torch.Tensor:
        """The weight in the original input order, as the plain Linear had it."""
        stored = self.stored_weight()
        if self.perm is None:
            return stored
        weight = torch.empty_like(stored)
        weight[:, self.perm] = stored
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return F.linear(x, self.stored_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.n}:{self.m}, "
                f"permuted={self.perm is not None}, bias={self.bias is not None}")
