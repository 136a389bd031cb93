"""The analytic router: a linear router computed in closed form from calibration statistics, no gradient steps.

Definition, per layer, on the calibration inputs X (tokens, hidden) of the FFN:
  mass      M[t, e] = Σ_{j in expert e} |act(g_j·x_t) · (u_j·x_t)| · ‖d_j‖   (g, u: gate/up rows, d: down
            columns of the dense FFN): how much expert e would add to token t's output
  targets   Z = M standardised per expert (zero mean, unit variance over the tokens)
  weights   W = argmin ‖X Wᵀ − Z‖² + λ‖W‖²,  λ = RIDGE · mean(X²) · tokens   (ridge regression)
  balance   the router has no bias (stock MoE routers have none), so a per-expert offset b is folded into
            the weights along a direction v with X v ≈ 1 (v = argmin ‖X v − 1‖² + λ‖v‖²): W ← W + b vᵀ.
            b starts at 0 and moves, BALANCE_ROUNDS times, against each expert's excess share of the top-k
            picks on the calibration tokens (load / fair share − 1, clipped to ±1, a shrinking step)
  scale     the weights are finally scaled so the logits' standard deviation is TEMPERATURE: softmax
            weights of the top-k are then within a few percent of equal, so each chosen expert adds about
            its neurons' share as in the dense FFN (the routing itself depends only on the order)
CMoE builds its router from each expert's representative neuron, |(û_r·x̂)·act(ĝ_r·x̂)|; that is not a
linear map (so no stock MoE checkpoint could hold it) and on the default model it routed worse than this
regression (BENCHMARKS.md, factorize section).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AnalyticRouter", "expert_mass", "ridge_solve", "analytic_router", "expert_load"]

RIDGE = 1e-2
BALANCE_ROUNDS = 300
TEMPERATURE = 0.05


@dataclass
class AnalyticRouter:
    weight: torch.Tensor  # (experts, hidden), float32
    load: list[float]  # share of the top-k picks per expert on the calibration tokens


@torch.no_grad()
def expert_mass(inputs: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act_fn,
                groups: torch.Tensor) -> torch.Tensor:
    """(tokens, experts) M[t, e] = Σ_{j∈e} |act(g_j·x)·(u_j·x)|·‖d_j‖ over the dense weights."""
    x = inputs.float()
    magnitude = (act_fn(x @ gate.float().T) * (x @ up.float().T)).abs() * down.float().norm(dim=0)
    return torch.stack([magnitude[:, g].sum(1) for g in groups], dim=1)


def ridge_solve(inputs: torch.Tensor, targets: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """(outputs, hidden) W minimising ‖X Wᵀ − Y‖² + λ‖W‖², λ = ridge · mean(X²) · tokens."""
    x = inputs.double()
    gram = x.T @ x
    gram += torch.eye(x.shape[1], dtype=x.dtype) * (ridge * x.pow(2).mean() * x.shape[0])
    return torch.linalg.solve(gram, x.T @ targets.double()).T.float()


def expert_load(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """(experts,) share of the top-k picks each expert gets."""
    picked = logits.topk(top_k, dim=-1).indices.flatten()
    return torch.bincount(picked, minlength=logits.shape[1]).float() / picked.numel()


@torch.no_grad()
def analytic_router(inputs: torch.Tensor, mass: torch.Tensor, top_k: int, balance: bool = True) -> AnalyticRouter:
    """The router of the module docstring from the FFN's calibration inputs and the experts' mass."""
    x = inputs.float()
    targets = (mass - mass.mean(0)) / mass.std(0).clamp_min(1e-12)
    weight = ridge_solve(x, targets)
    experts = weight.shape[0]
    if balance and top_k < experts:
        direction = ridge_solve(x, torch.ones(x.shape[0], 1))[0]  # X v ≈ 1: a bias through the inputs
        offsets = torch.zeros(experts)
        step = 0.1 * (x @ weight.T).std().item()
        for _ in range(BALANCE_ROUNDS):
            load = expert_load(x @ (weight + offsets[:, None] * direction).T, top_k)
            offsets -= step * (load * experts - 1).clamp(-1, 1)
            step *= 0.99
        weight = weight + offsets[:, None] * direction
    logits = x @ weight.T
    weight = weight * (TEMPERATURE / logits.std().clamp_min(1e-12))
    return AnalyticRouter(weight, expert_load(x @ weight.T, top_k).tolist())
