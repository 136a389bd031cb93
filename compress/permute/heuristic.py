"""Channel permutation by importance balancing (the RIA paper's channel permutation).

Sort input channels by total importance, deal them zig-zag over the N:M groups so that every group
gets a mix of strong and weak channels, then refine position by position: the channels sitting at
position p of every group are re-assigned to groups by linear-sum assignment (Hungarian), maximising
the importance that survives N:M masking. The result never keeps less importance than no permutation.

Convention: `perm[i]` is the original channel placed at position i; a consumer uses W[:, perm].
"""
from __future__ import annotations

import torch

__all__ = ["kept_importance", "zigzag", "refine", "heuristic_permutation"]


def kept_importance(score: torch.Tensor, n: int, m: int, perm: torch.Tensor | None = None) -> float:
    """Total score that N:M masking keeps, with the columns in `perm` order."""
    s = score if perm is None else score[:, perm]
    rows, cols = s.shape
    return float(s.reshape(rows, cols // m, m).topk(n, dim=2).values.sum())


def zigzag(importance: torch.Tensor, m: int) -> torch.Tensor:
    """Deal channels, strongest first, over the groups back and forth (boustrophedon)."""
    order = importance.argsort(descending=True)
    groups = importance.numel() // m
    slots = torch.empty(groups, m, dtype=torch.long)
    for tier in range(m):
        chunk = order[tier * groups : (tier + 1) * groups]
        slots[:, tier] = chunk if tier % 2 == 0 else chunk.flip(0)
    return slots.reshape(-1)


def _gain_matrix(score: torch.Tensor, channels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """gain[c, g] = Σ_rows relu(score[:, channels[c]] − thresholds[g]): what channel c adds to group g.

    relu(a) = (a + |a|) / 2, so the sum is one L1 distance matrix plus row and column sums.
    """
    values = score[:, channels].T.contiguous()  # (C, rows)
    l1 = torch.cdist(values[None].double(), thresholds[None].double(), p=1)[0]
    return (values.double().sum(1, keepdim=True) - thresholds.double().sum(1)[None] + l1) / 2


def refine(score: torch.Tensor, perm: torch.Tensor, n: int, m: int, blocks: int = 1, rounds: int = 3) -> torch.Tensor:
    """Improve `perm` by Hungarian re-assignment of each position's channels over the groups."""
    from scipy.optimize import linear_sum_assignment

    slots = perm.clone().reshape(-1, m)
    groups = slots.shape[0]
    bounds = torch.linspace(0, groups, steps=max(1, min(blocks, groups)) + 1).round().long().tolist()
    best = kept_importance(score, n, m, slots.reshape(-1))
    for _ in range(rounds):
        for position in range(m):
            others = torch.cat([slots[:, :position], slots[:, position + 1 :]], 1)  # (G, m-1)
            other_scores = score[:, others].permute(1, 0, 2)  # (G, rows, m-1)
            thresholds = other_scores.topk(n, dim=2).values[..., -1]  # n-th largest of the others
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                channels = slots[lo:hi, position]
                gains = _gain_matrix(score, channels, thresholds[lo:hi]).cpu().numpy()
                chan_idx, group_idx = linear_sum_assignment(gains, maximize=True)
                placed = torch.empty_like(channels)
                placed[torch.as_tensor(group_idx)] = channels[torch.as_tensor(chan_idx)]
                slots[lo:hi, position] = placed
        kept = kept_importance(score, n, m, slots.reshape(-1))
        if kept <= best * (1 + 1e-6):
            best = max(best, kept)
            break
        best = kept
    return slots.reshape(-1)


def heuristic_permutation(score: torch.Tensor, n: int, m: int, blocks: int = 1) -> torch.Tensor:
    """Permutation of input channels for an (out × in) importance score; identity if nothing beats it."""
    cols = score.shape[1]
    score = score.float()
    identity = torch.arange(cols, device=score.device)
    candidate = refine(score, zigzag(score.sum(0).cpu(), m).to(score.device), n, m, blocks)
    if kept_importance(score, n, m, candidate) > kept_importance(score, n, m, identity):
        return candidate.cpu()
    return identity.cpu()
