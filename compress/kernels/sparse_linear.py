"""SparseLinear: a Linear whose weight is held in the compressed N:M format.

forward computes x·Wᵀ (+ b). The stored weight may be in permuted input order (`perm`): then the
activations are gathered first, x[..., perm]. Which path runs (`kernels`, set by `use_kernels`):
  prefill  2:4 on CUDA with cuSPARSELt (compress.kernels.cslt), except one bf16 token: the product comes
           feature-major and is transposed back (a tiled copy, or a view where `contiguous_output` is off);
  decode   up to 16 tokens where cuSPARSELt does not apply (other N:M, one bf16 token): the Triton kernels
           of compress.kernels.decode, reading the compressed values and metadata directly (the
           permutation is applied while loading x);
  dense    everywhere else (CPU, other N:M at prefill, kernels off): the weight unpacked once and cached.

Every forward records the path it took in `ran_on` ("cusparselt", "triton" or "dense"); with the kernels
on, `fallback_reason` says why it is not on the sparse kernel meant for it (cuSPARSELt refused the shape or
is missing, no kernel for this N:M and token count, input not on CUDA), else None. Under a CUDA graph the
record is that of the captured call, which is what replays. `kernel_usage` and `kernel_fallbacks` read
them for a whole model.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from compress.kernels.nm_format import pack_nm, unpack_nm

__all__ = ["SparseLinear", "use_kernels", "kernel_usage", "kernel_fallbacks"]

# One token in bf16, or wherever cuSPARSELt is unavailable, takes the Triton kernels; everything else goes
# to cuSPARSELt, whose fp16 products beat dense from 8 tokens up (BENCHMARKS.md).
DECODE_TOKENS = 1
DECODE_MAX_TOKENS = 16  # the most tokens sent to the Triton kernels


def _on_gpu(x: torch.Tensor) -> bool:
    return x.is_cuda  # one place for the CPU tests to pretend


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
        self.kernels = False
        self.contiguous_output = True
        self._nibbles: torch.Tensor | None = None
        self._cslt = None
        self._cslt_refused: str | None = None  # why a 2:4 weight has no cuSPARSELt form
        self.ran_on: str | None = None
        self.fallback_reason: str | None = None

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

    def prepare_kernels(self) -> None:
        """Build the kernel-side forms of the weight (on its current device); drop the dense cache."""
        from compress.kernels.cslt import CsltWeight, cslt_available

        self._dense = None
        if (self.n, self.m) == (2, 4):
            from compress.kernels.decode import nibbles_24

            self._nibbles = nibbles_24(self.mask, self.in_features)
            if cslt_available() and self.values.is_cuda:
                try:
                    self._cslt = CsltWeight(unpack_nm(self.values, self.mask, self.in_features))
                    self._cslt_refused = None
                except RuntimeError as exc:  # shapes cuSPARSELt refuses run on the other paths
                    self._cslt = None
                    self._cslt_refused = f"cuSPARSELt refused {self.out_features}x{self.in_features}: {str(exc)[:120]}"
                    warnings.warn(self._cslt_refused)
            elif self._cslt is None:
                self._cslt_refused = ("cuSPARSELt is not available" if not cslt_available()
                                      else "the weight was not on a GPU when the kernels were prepared")

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        from compress.kernels import decode

        if self._nibbles is not None:
            kernel = decode.nm24_gemv if x.numel() // self.in_features <= 4 else decode.nm24_mm
            out = kernel(x, self.values, self._nibbles, self.in_features, self.perm)
        else:
            out = decode.nm_mm(x, self.values, self.mask, self.in_features, self.n, self.m, self.perm)
        return out if self.bias is None else out + self.bias

    def _prefill(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        x2d = x.reshape(-1, self.in_features)
        product = self._cslt.mm_t(x2d, self.bias)
        if self.contiguous_output and torch.compiler.is_compiling():
            out = product[:, : x2d.shape[0]].t().contiguous()  # left to the compiler, which can fuse the copy
        elif self.contiguous_output:
            from compress.kernels.layout import transpose_copy

            out = transpose_copy(product)[: x2d.shape[0]]
        else:
            out = product[:, : x2d.shape[0]].t()
        return out.reshape(*x.shape[:-1], self.out_features)

    def _decode_applies(self) -> bool:
        return self._nibbles is not None or (self.m & (self.m - 1) == 0 and self.m <= 16 and self.in_features % 8 == 0)

    def _ran(self, path: str, reason: str | None = None) -> None:
        self.ran_on, self.fallback_reason = path, reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels and _on_gpu(x):
            tokens = x.numel() // self.in_features
            wants_cslt = (self.n, self.m) == (2, 4) and not (tokens <= DECODE_TOKENS and x.dtype == torch.bfloat16)
            if wants_cslt and self._cslt is not None:
                try:
                    out = self._prefill(x)
                    self._ran("cusparselt")
                    return out
                except RuntimeError as exc:  # a shape cuSPARSELt refuses: this module stays on the other paths
                    self._cslt_refused = f"cuSPARSELt refused {self.out_features}x{self.in_features}: {str(exc)[:120]}"
                    warnings.warn(self._cslt_refused)
                    self._cslt = None
            reason = self._cslt_refused if wants_cslt else None
            if tokens <= DECODE_MAX_TOKENS and self._decode_applies():
                out = self._decode(x)
                self._ran("triton", reason)
                return out
            self._ran("dense", reason or f"no sparse kernel for {self.n}:{self.m} at {tokens} tokens")
        else:
            self._ran("dense", f"input on {x.device.type}: the kernels need CUDA" if self.kernels else None)
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return F.linear(x, self.stored_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.n}:{self.m}, "
                f"permuted={self.perm is not None}, bias={self.bias is not None}")


def use_kernels(model: nn.Module, enabled: bool = True, transposed_mlp: bool = True) -> int:
    """Switch every SparseLinear of `model` to the GPU kernels (call after moving the model to CUDA).

    With `transposed_mlp` the MLP Linears that widen the hidden state (gate/up) hand on the feature-major
    product as a transposed view, saving a copy: their consumer, the down projection, wants exactly that
    layout. Outputs of hidden size feed the residual stream and attention reshapes, so they stay
    contiguous. Returns how many modules were switched."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            if enabled:
                module.prepare_kernels()
            module.kernels = enabled
            module.ran_on = module.fallback_reason = None  # a fresh record for the next run
            module.contiguous_output = not (transposed_mlp and "mlp" in name and module.out_features != hidden)
            count += 1
    return count


def kernel_usage(model: nn.Module) -> dict[str, list[str]]:
    """Path ("cusparselt", "triton", "dense") → names of the SparseLinear modules whose last forward took
    it; modules that have not run since `use_kernels` are left out."""
    usage: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear) and module.ran_on is not None:
            usage.setdefault(module.ran_on, []).append(name)
    return usage


def kernel_fallbacks(model: nn.Module) -> dict[str, str]:
    """Name → reason for each SparseLinear whose last forward, with the kernels on, missed its sparse kernel."""
    return {name: module.fallback_reason for name, module in model.named_modules()
            if isinstance(module, SparseLinear) and module.fallback_reason is not None}
