"""Channel permutations before N:M masking: choose, prune in permuted order, and record where each folds.

A Linear's input channels are permuted (W[:, perm]) before the N:M mask is chosen, so strong weights
spread over the M-groups; the pruned weight is then put back in the original order for the dense
export. Which permutations fold into the model at zero run-time cost (see fold.py):
  down_proj input → gate_proj/up_proj output rows (exact);
  o_proj input    → v_proj output rows, within a head, one permutation per KV head (exact; the search
                    is restricted to such permutations);
  q/k/v, gate/up  → per-layer permutations of the residual stream do not fold: the index is carried.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compress.errors import BadInput
from compress.permute.fold import attention_values_perm, inverse
from compress.permute.heuristic import heuristic_permutation
from compress.permute.learned import LearnConfig, learned_permutation

__all__ = ["PERMUTATIONS", "PermuteConfig", "HeadLayout", "site_of", "find_permutation", "SITE_NOTES"]

PERMUTATIONS = ("none", "heuristic", "learned")
SITE_NOTES = {
    "mlp": "folds into gate/up output rows",
    "heads": "folds into v_proj output rows (per KV head)",
    "index": "carried as an index (activation gather)",
}


@dataclass(frozen=True)
class PermuteConfig:
    kind: str = "none"
    blocks: int = 1  # split the Hungarian refinement into this many independent blocks
    learn: LearnConfig = field(default_factory=LearnConfig)

    def __post_init__(self):
        if self.kind not in PERMUTATIONS:
            raise BadInput(f"unknown --permute {self.kind!r}: choose one of {', '.join(PERMUTATIONS)}")
        if self.blocks < 1:
            raise BadInput("--perm-blocks must be at least 1")


@dataclass(frozen=True)
class HeadLayout:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> "HeadLayout | None":
        heads = getattr(config, "num_attention_heads", None)
        if not heads:
            return None
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(heads, kv, head_dim)

    def kv_of_head(self) -> torch.Tensor:
        return torch.arange(self.num_heads) // (self.num_heads // self.num_kv_heads)


def site_of(linear_name: str, in_features: int, heads: HeadLayout | None) -> str:
    last = linear_name.rsplit(".", 1)[-1]
    if last in ("down_proj", "w2", "fc2"):
        return "mlp"
    if last in ("o_proj", "out_proj") and heads and in_features == heads.num_heads * heads.head_dim:
        return "heads"
    return "index"


def _head_permutation(score: torch.Tensor, n: int, m: int, heads: HeadLayout, blocks: int) -> torch.Tensor:
    """One permutation of head_dim per KV head, scored over all query heads that share it."""
    per_head = score.view(score.shape[0], heads.num_heads, heads.head_dim)
    kv = heads.kv_of_head()
    head_perms = torch.stack([
        heuristic_permutation(per_head[:, kv == k].permute(1, 0, 2).reshape(-1, heads.head_dim), n, m, blocks)
        for k in range(heads.num_kv_heads)
    ])
    return attention_values_perm(head_perms, heads.num_heads, heads.num_kv_heads, heads.head_dim)


def find_permutation(config: PermuteConfig, pattern, weight: torch.Tensor, score: torch.Tensor,
                     hessian: torch.Tensor | None, site: str, heads: HeadLayout | None) -> tuple[torch.Tensor, dict]:
    """The input-channel permutation for one Linear (or a stack sharing an input), and what was learned."""
    n, m = pattern.n, pattern.m
    if site == "heads":
        perm = _head_permutation(score.cpu(), n, m, heads, config.blocks)
    else:
        perm = heuristic_permutation(score, n, m, config.blocks)
    info: dict = {}
    if config.kind == "learned":
        slots = heads.kv_of_head() if site == "heads" else None
        block = heads.head_dim if site == "heads" else None
        perm, info = learned_permutation(weight, score, hessian.to(weight.device), pattern, perm, config.learn,
                                         block_slots=slots, block=block)
    return perm, info


def unpermute(pruned_in_perm_order: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return pruned_in_perm_order[:, inverse(perm).to(pruned_in_perm_order.device)]
