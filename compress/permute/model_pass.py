"""The model-level permutation pass: every group's block permutation learned together against the dense model.

After the layer-sequential pass has pruned the model with its permutations (the heuristic's, or the global
per-layer mode's), this pass learns one block-diagonal permutation per group on top of them, all groups of all
decoder layers at once, against the dense model's final hidden states (per token, 1 − cosine similarity, as
PermLLM's objective). Each step hardens every group's Sinkhorn matrix by Hungarian matching, recomputes the N:M
masks from the permuted scores (the hard permutation and mask forward, Sinkhorn and the sigmoid soft mask
backward: relaxed.py), runs the whole model once on a few calibration windows and takes one normalised gradient
step on the logits. The weights stay frozen; only the masks move.

The caller (compress/prune/permute_pass.py) prunes with the hardened result and keeps it only if the pruned
model beats its start on the whole calibration set (an exact forward of each), so the pass never ends worse than
where it began on its own objective.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.func import functional_call

from compress.permute.global_mode import (GroupPlan, annealed_temperature, block_layout, normalise_gradients,
                                          relaxed_weight)
from compress.permute.relaxed import harden, one_hot, sinkhorn, straight_through

__all__ = ["ModelPassConfig", "plans_of", "learn_model_permutations", "cosine_error", "final_hidden", "model_objective"]


@dataclass(frozen=True)
class ModelPassConfig:
    steps: int = 100
    windows: int = 2  # calibration windows per step
    block: int = 64
    lr: float = 0.5  # the largest logit step of each group per step
    tau_start: float = 1.0
    tau_end: float = 0.05
    mask_tau: float = 0.2
    init: float = 1.0
    sinkhorn_iters: int = 20
    seed: int = 0

    def to_dict(self) -> dict:
        return {"objective": "dense model's final hidden states (per token, 1 - cosine)", **asdict(self)}


def plans_of(model, prefix: str, starts, perms, pattern, block: int, heads) -> list[GroupPlan]:
    """One learning problem per group start (from its permutation in `perms`), parameters named relative to
    the submodule at `prefix`."""
    plans, cut = [], len(prefix) + 1 if prefix else 0
    for start, perm in zip(starts, perms):
        head_block = (heads.head_dim, heads.kv_of_head()) if start.site == "heads" else None
        _, units = block_layout(start.stacked.shape[1], pattern.m, block, head_block)
        device = start.stacked.device
        plans.append(GroupPlan(params=[n[cut:] + ".weight" for n in start.names],
                               rows=[model.get_submodule(n).weight.shape[0] for n in start.names],
                               weight=start.stacked.float()[:, perm.to(device)],
                               score=start.score.float()[:, perm.to(device)], start=perm.cpu(),
                               unit_of_block=units.to(device)))
    return plans


def cosine_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 − cos(out, ref)."""
    return (1 - torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1)).mean()


def final_hidden(model, weights: dict, ids: torch.Tensor) -> torch.Tensor:
    """The model's final hidden states with `weights` substituted, each in its parameter's dtype."""
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    weights = {name: w.to(dtypes[name]) for name, w in weights.items()}
    out = functional_call(model, weights, (ids,), {"use_cache": False}, strict=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _weights(plans, indices, n, m, mask_tau, soft) -> dict:
    weights = {}
    for i, (plan, index) in enumerate(zip(plans, indices)):
        p = straight_through(one_hot(index, soft[i].dtype), soft[i])
        weights.update(zip(plan.params, relaxed_weight(plan, p, n, m, mask_tau, True).split(plan.rows)))
    return weights


@torch.no_grad()
def model_objective(model, weights: dict, windows: torch.Tensor, targets: torch.Tensor, batch: int) -> float:
    """The objective over every window, `weights` substituted (by name relative to `model`)."""
    total = 0.0
    for lo in range(0, windows.shape[0], batch):
        out = final_hidden(model, weights, windows[lo:lo + batch])
        total += cosine_error(out, targets[lo:lo + batch]).item() * out.shape[0]
    return total / windows.shape[0]


def learn_model_permutations(base_model, plans: list[GroupPlan], windows: torch.Tensor, targets: torch.Tensor,
                             n: int, m: int, config: ModelPassConfig,
                             on_step: Callable[[dict], None] | None = None) -> tuple[list[torch.Tensor], dict]:
    """The hardened input permutation of each plan after `config.steps` steps, and a summary.

    `base_model` returns final hidden states; `windows` (count, seqlen) are calibration token ids and `targets`
    the dense model's final hidden states on them."""
    generator = torch.Generator().manual_seed(config.seed)
    device = plans[0].weight.device
    identity = [torch.arange(plan.size, device=device).repeat(plan.units, 1) for plan in plans]
    logits = [(config.init * torch.eye(plan.size, device=device)).repeat(plan.units, 1, 1).requires_grad_()
              for plan in plans]
    optimizer = torch.optim.SGD(logits, lr=config.lr)
    losses = []
    with torch.enable_grad():
        for step in range(config.steps):
            tau = annealed_temperature(config, step)
            soft = [sinkhorn(lg, tau, config.sinkhorn_iters) for lg in logits]
            indices = [harden(s) for s in soft]
            pick = torch.randperm(windows.shape[0], generator=generator)[:config.windows]
            ids = windows[pick.to(windows.device)]
            loss = cosine_error(final_hidden(base_model, _weights(plans, indices, n, m, config.mask_tau, soft), ids),
                                targets[pick.to(targets.device)])
            optimizer.zero_grad()
            loss.backward()
            normalise_gradients(logits)
            optimizer.step()
            moved = sum(int((i != j).sum()) for i, j in zip(indices, identity))
            losses.append(loss.item())
            if on_step:
                on_step({"step": step + 1, "steps": config.steps, "loss": loss.item(), "channels_moved": moved})
    with torch.no_grad():
        final = [harden(sinkhorn(lg, config.tau_end, config.sinkhorn_iters)) for lg in logits]
    moved = sum(int((i != j).sum()) for i, j in zip(final, identity))
    return [plan.permutation(index) for plan, index in zip(plans, final)], {
        "steps": config.steps, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "channels_moved": moved}
