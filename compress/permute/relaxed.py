"""Differentiable pieces of the global permutation mode: block-diagonal soft permutations and soft N:M masks.

A block-diagonal permutation of `blocks × size` input channels is held as logits of shape (units, size, size);
block b uses unit `unit_of_block[b]` (several blocks share one unit when attention heads that read one KV head
must share one permutation). Position i of a block takes channel j of that block with weight P[u, i, j]:
W'[:, b·size + i] = Σ_j P[u, i, j] · W[:, b·size + j]; a hard P is one-hot rows, i.e. index[u, i] = j.

Sinkhorn normalises exp(logits / τ) towards a doubly stochastic matrix; Hungarian matching (per unit) turns it
into the nearest permutation. Both the permutation and the N:M mask run hard in the forward pass and soft in the
backward pass (straight-through): the loss seen is always the loss of a real permutation and a real mask.
"""
from __future__ import annotations

import torch

__all__ = ["sinkhorn", "harden", "one_hot", "straight_through", "permute_blocks", "unpermute_blocks",
           "soft_nm_mask", "hard_nm_mask", "nm_mask_ste", "expand_index"]


def sinkhorn(logits: torch.Tensor, tau: float, iters: int = 20) -> torch.Tensor:
    """exp(logits / τ) alternately row- and column-normalised (in log space), ending on columns."""
    log_p = logits / tau
    for _ in range(iters):
        log_p = log_p - log_p.logsumexp(-1, keepdim=True)
        log_p = log_p - log_p.logsumexp(-2, keepdim=True)
    return log_p.exp()


def harden(soft: torch.Tensor) -> torch.Tensor:
    """index[u, i]: the permutation of each unit that maximises Σ_i soft[u, i, index[u, i]] (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    values = soft.detach().double().cpu().numpy()
    index = torch.empty(soft.shape[:2], dtype=torch.long)
    for unit, matrix in enumerate(values):
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        index[unit, torch.as_tensor(rows)] = torch.as_tensor(cols)
    return index.to(soft.device)


def one_hot(index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return torch.nn.functional.one_hot(index, index.shape[-1]).to(dtype)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward: `hard`; backward: the gradient of `soft`."""
    return hard + (soft - soft.detach())


def permute_blocks(matrix: torch.Tensor, p: torch.Tensor, unit_of_block: torch.Tensor) -> torch.Tensor:
    """Columns of `matrix` (rows × blocks·size) mixed within each block by P[unit_of_block[b]]."""
    rows, size = matrix.shape[0], p.shape[-1]
    blocks = matrix.reshape(rows, -1, size)
    return torch.einsum("rbj,bij->rbi", blocks, p[unit_of_block]).reshape(rows, -1)


def unpermute_blocks(matrix: torch.Tensor, p: torch.Tensor, unit_of_block: torch.Tensor) -> torch.Tensor:
    """The transpose of permute_blocks (its inverse when P is a permutation)."""
    rows, size = matrix.shape[0], p.shape[-1]
    blocks = matrix.reshape(rows, -1, size)
    return torch.einsum("rbi,bij->rbj", blocks, p[unit_of_block]).reshape(rows, -1)


def expand_index(index: torch.Tensor, unit_of_block: torch.Tensor) -> torch.Tensor:
    """The flat permutation (perm[b·size + i] = b·size + index[u(b), i]) that per-unit indices amount to."""
    size = index.shape[-1]
    offsets = torch.arange(unit_of_block.numel(), device=index.device).unsqueeze(1) * size
    return (offsets + index[unit_of_block.to(index.device)]).reshape(-1)


def hard_nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """1.0 for the n highest of every m consecutive entries of each row, else 0.0."""
    groups = score.unflatten(-1, (-1, m))
    keep = torch.zeros_like(groups).scatter_(-1, groups.topk(n, dim=-1).indices, 1.0)
    return keep.flatten(-2)


def soft_nm_mask(score: torch.Tensor, n: int, m: int, tau: float) -> torch.Tensor:
    """sigmoid((s − t) / (τ·s̄)) per M-group: t halfway between the group's n-th and (n+1)-th largest score,
    s̄ the group's mean |score|. Smooth in the score wherever the group's order has no ties; tends to the
    hard mask as τ → 0."""
    if n >= m:
        return torch.ones_like(score)
    groups = score.unflatten(-1, (-1, m))
    top = groups.topk(n + 1, dim=-1).values
    threshold = (top[..., n - 1:n] + top[..., n:n + 1]) / 2
    scale = groups.abs().mean(-1, keepdim=True).clamp_min(1e-12)
    return torch.sigmoid((groups - threshold) / (tau * scale)).flatten(-2)


def nm_mask_ste(score: torch.Tensor, n: int, m: int, tau: float) -> torch.Tensor:
    """The hard N:M mask forward, the soft mask's gradient backward."""
    return straight_through(hard_nm_mask(score.detach(), n, m), soft_nm_mask(score, n, m, tau))
