"""Learned channel permutations (after PermLLM, NeurIPS 2025): Sinkhorn-relaxed, block-diagonal.

Starting from a given permutation (the heuristic one), each block of B channels gets a B×B logit
matrix. The soft permutation is Sinkhorn(exp(logits/τ)) with τ annealed; the forward pass uses the hard
permutation found by Hungarian matching on the soft one and the backward pass the soft one
(straight-through). The N:M mask comes from the method's importance of the permuted weight, and the
loss is the layer's output error on calibration activations, tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ) with H = XᵀX,
so every calibration token counts without storing activations. The best hard permutation seen is
returned, so the result never has a higher loss than its initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.prune.pattern import Pattern, mask_for

__all__ = ["LearnConfig", "sinkhorn", "learned_permutation", "output_loss"]


@dataclass(frozen=True)
class LearnConfig:
    block: int = 64
    steps: int = 100
    lr: float = 0.05
    tau_start: float = 1.0
    tau_end: float = 0.1
    sinkhorn_iters: int = 20
    init_scale: float = 5.0  # diagonal logit of the starting permutation
    metric_scale: float = 1.0  # the importance, divided by its mean, times this, feeds the soft mask


def sinkhorn(logits: torch.Tensor, tau: float, iters: int) -> torch.Tensor:
    """Doubly stochastic matrices from a batch of square logit matrices, in log space."""
    log_alpha = logits / tau
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=2, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=1, keepdim=True)
    return log_alpha.exp()


def _hard(soft: torch.Tensor) -> torch.Tensor:
    """Per block, the permutation matrix closest to the soft one (Hungarian), as 0/1 tensor."""
    from scipy.optimize import linear_sum_assignment

    hard = torch.zeros_like(soft)
    scores = soft.detach().double().cpu().numpy()
    for b in range(soft.shape[0]):
        rows, cols = linear_sum_assignment(scores[b], maximize=True)
        hard[b, torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
    return hard


def output_loss(weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Relative output error of replacing weight by pruned on inputs whose XᵀX is `hessian`."""
    delta = weight - pruned
    return ((delta @ hessian) * delta).sum() / ((weight @ hessian) * weight).sum().clamp_min(1e-30)


def _block_size(features: int, wanted: int, m: int) -> int:
    for size in range(min(wanted, features) // m * m, 0, -m):
        if features % size == 0:
            return size
    return features


def learned_permutation(
    weight: torch.Tensor,
    score: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    init: torch.Tensor,
    config: LearnConfig = LearnConfig(),
    block_slots: torch.Tensor | None = None,
    block: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """Refine the column permutation `init` of `weight` (rows × in); returns (perm, history).

    `score` is the method's importance of `weight` in original order; `hessian` is XᵀX of its inputs.
    `block_slots[b]` says which logit matrix block b uses (tie blocks, e.g. attention heads sharing a
    KV head); by default every block has its own.
    """
    device = weight.device
    init = init.to(device)
    w0 = weight.float()[:, init]
    s0 = score.float()[:, init]
    h0 = hessian.float()[init][:, init]
    rows, features = w0.shape
    size = block or _block_size(features, config.block, pattern.m if pattern.is_nm else 1)
    blocks = features // size
    slots = torch.arange(blocks, device=device) if block_slots is None else block_slots.to(device)
    logits = torch.zeros(int(slots.max()) + 1, size, size, device=device)
    logits += config.init_scale * torch.eye(size, device=device)  # start at the given permutation
    logits.requires_grad_(True)
    with torch.enable_grad():
        return _train(w0, s0, h0, logits, slots, init, pattern, config, size)


def _train(w0, s0, h0, logits, slots, init, pattern, config, size):
    device, (rows, features) = w0.device, w0.shape
    blocks = features // size
    optimizer = torch.optim.Adam([logits], lr=config.lr)
    metric = s0 / s0.mean().clamp_min(1e-30) * config.metric_scale
    offsets = torch.arange(blocks, device=device)[:, None] * size

    def masked_loss(perm_matrices: torch.Tensor) -> torch.Tensor:
        """Loss of W ⊙ mask, the mask chosen in permuted order and mapped back (hard value, soft gradient)."""
        permuted = torch.einsum("rbi,bij->rbj", metric.view(rows, blocks, size), perm_matrices).reshape(rows, features)
        hard = mask_for(permuted.detach(), pattern).to(permuted.dtype)
        soft = torch.softmax(permuted.view(rows, -1, pattern.m), dim=-1).reshape(rows, features)
        mask_perm = (hard - soft).detach() + soft
        mask = torch.einsum("rbj,bij->rbi", mask_perm.view(rows, blocks, size), perm_matrices).reshape(rows, features)
        return output_loss(w0, w0 * mask, h0)

    identity = torch.eye(size, device=device).expand(blocks, size, size)
    with torch.no_grad():
        best_loss = float(masked_loss(identity))
    best_order, history = torch.arange(features, device=device), [best_loss]
    for step in range(config.steps):
        tau = config.tau_start + (config.tau_end - config.tau_start) * step / max(config.steps - 1, 1)
        soft = sinkhorn(logits, tau, config.sinkhorn_iters)[slots]
        hard = _hard(soft)
        loss = masked_loss((hard - soft).detach() + soft)  # hard permutation forward, soft backward
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if history[-1] < best_loss:
            best_loss = history[-1]
            best_order = (hard.argmax(1) + offsets).reshape(-1)
    return init[best_order].cpu(), {"initial_loss": history[0], "best_loss": best_loss, "block": size,
                                    "steps": config.steps}
