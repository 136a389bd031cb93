"""Magnitude pruning: keep the largest |W|."""
import torch

from compress.prune.method import Method
from compress.pattern import Pattern, mask_for


def score(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs()


def prune(weight: torch.Tensor, stats, pattern: Pattern, options: dict) -> torch.Tensor:
    return weight * mask_for(score(weight.float()), pattern)


METHOD = Method("magnitude", collector=None, prune=prune, score=lambda w, stats, options: score(w.float()), summary="|W|, no calibration data")
