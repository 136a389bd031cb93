"""Wanda (Sun et al., 2023): score = |W_ij| · ||X_j||₂, compared within each output row."""
import torch

from compress.prune.method import Method
from compress.pattern import Pattern, mask_for


def score(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    return weight.abs() * input_norm.unsqueeze(0)


def prune(weight: torch.Tensor, stats, pattern: Pattern, options: dict) -> torch.Tensor:
    return weight * mask_for(score(weight.float(), stats.norm()), pattern)


METHOD = Method("wanda", collector="input_norm", prune=prune,
                score=lambda w, stats, options: score(w.float(), stats.norm()), summary="|W|·‖X‖, per output row")
