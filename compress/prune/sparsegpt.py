"""SparseGPT (Frantar & Alistarh, 2023): prune with optimal-brain-surgeon updates of the kept weights.

Columns are processed in blocks; within a block each pruned weight's error is spread over the later
columns through the inverse Hessian's Cholesky factor, and the block's accumulated error is pushed
onto the remaining columns at once ("lazy batch" updates). For N:M the mask of each M-group is chosen
when the sweep reaches the group, from the already-updated weights (as in the paper). Unstructured
masks keep the same fraction of every output row within each block.
"""
from __future__ import annotations

import torch

from compress.prune.method import Method
from compress.prune.pattern import Pattern, nm_mask, row_mask


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of (H + λI)⁻¹ and the mask of input channels that never fired."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    diag = torch.arange(h.shape[0], device=h.device)
    h[diag, diag] += damp * torch.mean(torch.diag(h))
    for attempt in range(5):
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            break
        h[diag, diag] += damp * torch.mean(torch.diag(h)) * (10**attempt)
    else:
        raise RuntimeError("SparseGPT: Hessian is not positive definite even after extra damping")
    inverse = torch.cholesky_inverse(chol)
    return torch.linalg.cholesky(inverse, upper=True), dead


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern, blocksize: int = 128, damp: float = 0.01
) -> torch.Tensor:
    w = weight.float().clone()
    hinv, dead = inverse_hessian_factor(hessian.float(), damp)
    w[:, dead] = 0
    cols = w.shape[1]
    if pattern.is_nm:
        blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        hinv_block = hinv[start:end, start:end]
        d = torch.diag(hinv_block)
        errors = torch.zeros_like(block)
        if not pattern.is_nm:
            keep = row_mask(block.pow(2) / d.pow(2), pattern.sparsity)
        for i in range(end - start):
            if pattern.is_nm and i % pattern.m == 0:
                group = slice(i, i + pattern.m)
                keep_group = nm_mask(block[:, group].pow(2) / d[group].pow(2), pattern.n, pattern.m)
            column = block[:, i]
            kept = keep_group[:, i % pattern.m] if pattern.is_nm else keep[:, i]
            err = (column - column * kept) / d[i]
            block[:, i:] -= err.unsqueeze(1) * hinv_block[i, i:].unsqueeze(0)
            block[:, i] *= kept  # exact zeros, free of rounding from the update above
            errors[:, i] = err
        w[:, start:end] = block
        w[:, end:] -= errors @ hinv[start:end, end:]
    return w.to(weight.dtype)


def prune(weight: torch.Tensor, stats, pattern: Pattern, options: dict) -> torch.Tensor:
    return sparsegpt_prune(
        weight, stats.matrix(), pattern,
        blocksize=int(options.get("blocksize", 128)), damp=float(options.get("damp", 0.01)),
    )


METHOD = Method("sparsegpt", collector="hessian", prune=prune, summary="OBS weight updates, Hessian XXᵀ")
