"""Refit a factorized FFN's down projections in closed form, given its routing (training-free compensation).

Once the router is fixed, the factorized FFN is linear in its down projections: token t's output is
  y_t = D_s h_s(x_t) + Σ_{e chosen for t} w_te · D_e h_e(x_t)
with h the neurons' act(gate)·up, w the routing weights and D_e the stored down weights (fold included).
Stacking the features F_t = [h_s, w_t0·h_0·[0 chosen], ..., w_tE·h_E·[E chosen]] (zeros for experts not chosen),
the down weights D = [D_s, D_0, ..., D_E] are replaced by the ridge solution pulled toward the sliced dense
weights D⁰:  D = D⁰ + (Y − F D⁰ᵀ)ᵀ F (FᵀF + λ I)⁻¹,  λ = ridge · mean(diag FᵀF),
with Y the dense FFN's outputs on the same calibration tokens. The neurons each token runs are unchanged;
only what they write back absorbs part of what the neurons it skipped would have added. Where every
neuron runs, Y = F D⁰ᵀ and nothing changes. (CMoE does not do this; it is a least-squares compensation in
the spirit of pruning's weight updates.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.factorize.moe import FactorizedMLP, route

__all__ = ["routed_features", "refit_down"]

REFIT_RIDGE = 1e-2


@torch.no_grad()
def routed_features(moe: FactorizedMLP, inputs: torch.Tensor) -> torch.Tensor:
    """(tokens, s + E·m) the features F of the module docstring."""
    x = inputs.to(moe.gate_up.dtype)
    weights, indices = route(moe.router(x), moe.top_k)
    experts, width = moe.num_experts, moe.down.shape[2]
    scale = torch.zeros(x.shape[0], experts, dtype=torch.float32, device=x.device)
    scale.scatter_(1, indices, weights.float())
    gate, up = torch.einsum("th,enh->ten", x, moe.gate_up).float().chunk(2, dim=-1)
    routed = (moe.act_fn(gate) * up * scale[..., None]).reshape(x.shape[0], experts * width)
    if moe.shared_down is None:
        return routed
    shared_gate, shared_up = F.linear(x, moe.shared_gate_up).float().chunk(2, dim=-1)
    return torch.cat([moe.act_fn(shared_gate) * shared_up, routed], dim=1)


@torch.no_grad()
def refit_down(moe: FactorizedMLP, inputs: torch.Tensor, teacher: torch.Tensor, ridge: float = REFIT_RIDGE) -> float:
    """Replace the down weights in place by the ridge solution; return the relative output error before/after
    on these tokens as their ratio (after / before)."""
    features = routed_features(moe, inputs).double()
    experts, hidden, width = moe.down.shape
    parts = ([moe.shared_down.double()] if moe.shared_down is not None else []) + [moe.down[e].double() for e in range(experts)]
    start = torch.cat(parts, dim=1)  # (hidden, s + E·m)
    target = teacher.double()
    residual = target - features @ start.T
    gram = features.T @ features
    gram.diagonal().add_(ridge * gram.diagonal().mean().clamp_min(1e-30))
    update = torch.linalg.solve(gram, features.T @ residual).T  # (hidden, s + E·m)
    down = start + update
    after = (target - features @ down.T).pow(2).sum() / residual.pow(2).sum().clamp_min(1e-30)
    shared = moe.shared_width
    if shared:
        moe.shared_down.copy_(down[:, :shared].to(moe.shared_down.dtype))
    moe.down.copy_(down[:, shared:].reshape(hidden, experts, width).permute(1, 0, 2).to(moe.down.dtype))
    return after.item()
