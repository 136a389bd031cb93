"""Channel permutations before N:M masking: choose, prune in permuted order, and record where each folds.

A Linear's input channels are permuted (W[:, perm]) before the N:M mask is chosen, so strong weights
spread over the M-groups; the pruned weight is then put back in the original order for the dense
export. Which permutations fold into the model at zero run-time cost (see fold.py):
  down_proj input → gate_proj/up_proj output rows (exact);
  o_proj input    → v_proj output rows, within a head, one permutation per KV head (exact; the search
                    is restricted to such permutations);
  q/k/v, gate/up  → per-layer permutations of the residual stream do not fold: the index is carried.
Kinds: heuristic (heuristic.py); learned (learned.py: a swap search on each Linear's own output error);
global (global_mode.py: block-diagonal Sinkhorn permutations learned against the dense decoder layer's output).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compress.errors import BadInput
from compress.model.roles import HeadLayout, names_with, role_of
from compress.permute.fold import attention_values_perm, fold_attention_values, fold_mlp, inverse
from compress.permute.heuristic import heuristic_permutation
from compress.permute.global_mode import GlobalConfig
from compress.permute.learned import LearnConfig, learned_permutation

__all__ = ["PERMUTATIONS", "PermuteConfig", "GlobalConfig", "HeadLayout", "site_of", "find_permutation", "permutation_candidates",
           "SITE_NOTES", "fold_into_model"]

PERMUTATIONS = ("none", "heuristic", "learned", "global")
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
    global_: GlobalConfig = field(default_factory=GlobalConfig)

    def __post_init__(self):
        if self.kind not in PERMUTATIONS:
            raise BadInput(f"unknown permutation {self.kind!r}: choose one of {', '.join(PERMUTATIONS)}", key="permute")
        if self.blocks < 1:
            raise BadInput("perm_blocks must be at least 1", key="perm_blocks")


def site_of(linear_name: str, in_features: int, heads: HeadLayout | None) -> str:
    role = role_of(linear_name)
    if role == "down":
        return "mlp"
    if role == "o" and heads and in_features == heads.num_heads * heads.head_dim:
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


def permutation_candidates(config: PermuteConfig, pattern, weight: torch.Tensor, score: torch.Tensor,
                           hessian: torch.Tensor | None, site: str,
                           heads: HeadLayout | None) -> list[tuple[str, torch.Tensor, dict]]:
    """(label, input-channel permutation, search info) for one Linear (or a stack sharing an input):
    the heuristic one first and, for `learned`, the swap search's result started from it. The caller
    keeps the learned one only where it lowers the whole decoder layer's output error (prune/apply.py)."""
    n, m = pattern.n, pattern.m
    if site == "heads":
        perm = _head_permutation(score.cpu(), n, m, heads, config.blocks)
    else:
        perm = heuristic_permutation(score, n, m, config.blocks)
    candidates = [("heuristic", perm, {})]
    if config.kind == "learned":
        slots = heads.kv_of_head() if site == "heads" else None
        block = heads.head_dim if site == "heads" else None
        learned, info = learned_permutation(weight, score, hessian.to(weight.device), pattern, perm, config.learn,
                                            block_slots=slots, block=block)
        candidates.append(("learned", learned, info))
    return candidates


def find_permutation(config: PermuteConfig, pattern, weight: torch.Tensor, score: torch.Tensor,
                     hessian: torch.Tensor | None, site: str, heads: HeadLayout | None) -> tuple[torch.Tensor, dict]:
    """The permutation of `config.kind` for one Linear, by its own loss alone, and what was learned."""
    _, perm, info = permutation_candidates(config, pattern, weight, score, hessian, site, heads)[-1]
    return perm, info


def unpermute(pruned_in_perm_order: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return pruned_in_perm_order[:, inverse(perm).to(pruned_in_perm_order.device)]


def _sibling(parent, *roles):
    return next((getattr(parent, name) for name in names_with(*roles) if hasattr(parent, name)), None)


def fold_into_model(model, permutations: dict[str, torch.Tensor], sites: dict[str, str],
                    heads: HeadLayout | None) -> dict[str, torch.Tensor]:
    """Fold every foldable permutation into the model in place; return those that must stay an index.

    Afterwards a folded consumer's weight is W[:, perm] in memory (so N:M in memory order) and its
    producers' output rows are permuted to match: the model computes exactly the same function.
    """
    remaining = {}
    for name, perm in permutations.items():
        parent = model.get_submodule(name.rpartition(".")[0])
        consumer = model.get_submodule(name)
        if sites.get(name) == "mlp":
            gate, up = _sibling(parent, "gate"), _sibling(parent, "up")
            if gate is not None and up is None:
                gate, up = None, gate  # a lone producer is folded alike
            if up is not None:
                fold_mlp(gate, up, consumer, perm)
                continue
        if sites.get(name) == "heads" and heads is not None:
            value = _sibling(parent, "v")
            if value is not None:
                kv_of_head = heads.kv_of_head()
                first_head = [int((kv_of_head == k).nonzero()[0]) for k in range(heads.num_kv_heads)]
                head_perms = torch.stack([perm[h * heads.head_dim:(h + 1) * heads.head_dim] - h * heads.head_dim
                                          for h in first_head])
                fold_attention_values(value, consumer, head_perms, heads.num_heads, heads.num_kv_heads,
                                      heads.head_dim)
                continue
        remaining[name] = perm
    return remaining
