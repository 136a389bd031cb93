"""RIA (Zhang et al., ICLR 2024): relative importance times activation strength.

score_ij = (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ||X_j||₂^a, with a = 0.5 by default.
The column sum runs over output rows, so the Linears that share an input are not stacked.
"""
import torch

from compress.prune.method import Method
from compress.pattern import Pattern, mask_for


def score(weight: torch.Tensor, input_norm: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    magnitude = weight.abs()
    row_sum = magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    col_sum = magnitude.sum(dim=0, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    relative = magnitude / row_sum + magnitude / col_sum
    return relative * input_norm.unsqueeze(0).pow(alpha)


def prune(weight: torch.Tensor, stats, pattern: Pattern, options: dict) -> torch.Tensor:
    alpha = float(options.get("ria_alpha", 0.5))
    return weight * mask_for(score(weight.float(), stats.norm(), alpha), pattern)


METHOD = Method(
    "ria", collector="input_norm", prune=prune, rows_independent=False,
    score=lambda w, stats, options: score(w.float(), stats.norm(), float(options.get("ria_alpha", 0.5))),
    summary="relative importance · ‖X‖^0.5",
)
