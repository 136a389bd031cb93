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

Memory: the plans hold the sequential pass's stashed weights and scores as they are (no copies), each planned
Linear computes its relaxed weight inside its forward, and every decoder layer runs under activation
checkpointing, so the relaxed weights' graph exists for one layer at a time (rebuilt in the backward pass), not
for the whole model at once.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from compress.model.layers import decoder_layers
from compress.permute.fold import inverse
from compress.permute.global_mode import BlockPlan, annealed_temperature, block_layout, normalise_gradients
from compress.permute.relaxed import (harden, nm_mask_ste, one_hot, permute_blocks, sinkhorn,
                                      straight_through, unpermute_blocks)

__all__ = ["ModelPassConfig", "ModelPlan", "plans_of", "learn_model_permutations", "cosine_error", "final_hidden",
           "model_objective"]


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


@dataclass
class ModelPlan(BlockPlan):
    """One group's learning problem. Unlike the per-layer learner's GroupPlan, `weight` and `score` stay in the
    original column order (they are the stash's own tensors); `start` is the permutation learning starts from."""

    params: list[str]  # weight names relative to the base model, stacked in this order
    rows: list[int]
    weight: torch.Tensor
    score: torch.Tensor
    start: torch.Tensor  # on the CPU
    unit_of_block: torch.Tensor

    def __post_init__(self):
        self.order = self.start.to(self.weight.device)
        self.back = inverse(self.start).to(self.weight.device)

    def relaxed_rows(self, lo: int, hi: int, p: torch.Tensor, n: int, m: int, mask_tau: float) -> torch.Tensor:
        """Rows lo:hi of the pruned weight (original order) under block permutation P on top of `start`: the N:M
        mask of the permuted score (straight-through), moved back onto the unpermuted weights. The mask is
        row-wise, so each Linear of a stacked group computes its own rows alone (global_mode.relaxed_weight)."""
        score = permute_blocks(self.score[lo:hi].float()[:, self.order], p, self.unit_of_block)
        mask = unpermute_blocks(nm_mask_ste(score, n, m, mask_tau), p, self.unit_of_block)[:, self.back]
        return self.weight[lo:hi] * mask


def plans_of(model, prefix: str, starts, perms, pattern, block: int, heads) -> list[ModelPlan]:
    """One learning problem per group start (from its permutation in `perms`), parameters named relative to
    the submodule at `prefix`."""
    plans, cut = [], len(prefix) + 1 if prefix else 0
    for start, perm in zip(starts, perms):
        head_block = (heads.head_dim, heads.kv_of_head()) if start.site == "heads" else None
        _, units = block_layout(start.stacked.shape[1], pattern.m, block, head_block)
        plans.append(ModelPlan(params=[n[cut:] + ".weight" for n in start.names],
                               rows=[model.get_submodule(n).weight.shape[0] for n in start.names],
                               weight=start.stacked, score=start.score, start=perm.cpu(),
                               unit_of_block=units.to(start.stacked.device)))
    return plans


def cosine_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 − cos(out, ref)."""
    return (1 - torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1)).mean()


def final_hidden(model, weights: dict, ids: torch.Tensor) -> torch.Tensor:
    """The model's final hidden states with `weights` substituted, each in its parameter's dtype."""
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    weights = {name: w.to(dtypes[name]) for name, w in weights.items()}
    return _last_hidden(functional_call(model, weights, (ids,), {"use_cache": False}, strict=False))


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@torch.no_grad()
def model_objective(model, weights: dict, windows: torch.Tensor, targets: torch.Tensor, batch: int) -> float:
    """The objective over every window, `weights` substituted (by name relative to `model`)."""
    total = 0.0
    for lo in range(0, windows.shape[0], batch):
        out = final_hidden(model, weights, windows[lo:lo + batch])
        total += cosine_error(out, targets[lo:lo + batch]).item() * out.shape[0]
    return total / windows.shape[0]


@contextmanager
def relaxed_forwards(base_model, plans: list[ModelPlan], current: list, n: int, m: int, mask_tau: float,
                     checkpointed_layers: bool = True):
    """While open, every planned Linear of `base_model` runs with its relaxed weight under `current[i]` (the
    step's straight-through permutation of plan i), every decoder layer runs checkpointed (when asked), and no
    parameter of the model collects a gradient."""
    def linear_forward(linear, plan_index, lo, hi):
        def forward(x):
            weight = plans[plan_index].relaxed_rows(lo, hi, current[plan_index], n, m, mask_tau)
            return torch.nn.functional.linear(x, weight.to(x.dtype), linear.bias)
        return forward

    def checkpointed(inner):
        def forward(*args, **kwargs):
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return forward

    patched = []  # (module, the instance forward it had, if any)
    for index, plan in enumerate(plans):
        lo = 0
        for name, rows in zip(plan.params, plan.rows):
            linear = base_model.get_submodule(name.removesuffix(".weight"))
            patched.append((linear, linear.__dict__.get("forward")))
            linear.forward = linear_forward(linear, index, lo, lo + rows)
            lo += rows
    for _, layer in decoder_layers(base_model) if checkpointed_layers else []:
        patched.append((layer, layer.__dict__.get("forward")))
        layer.forward = checkpointed(layer.forward)
    frozen = [p for p in base_model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward  # the class's forward again
            else:
                module.forward = previous
        for p in frozen:
            p.requires_grad_(True)


def learn_model_permutations(base_model, plans: list[ModelPlan], windows: torch.Tensor, targets: torch.Tensor,
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
    losses, current, began = [], [None] * len(plans), time.perf_counter()
    # checkpointing costs a second forward per step; only a GPU's memory needs it (a CPU's RAM holds a small model's graph)
    checkpointed = device.type == "cuda"
    with torch.enable_grad(), relaxed_forwards(base_model, plans, current, n, m, config.mask_tau, checkpointed):
        for step in range(config.steps):
            tau = annealed_temperature(config, step)
            soft = [sinkhorn(lg, tau, config.sinkhorn_iters) for lg in logits]
            indices = [harden(s) for s in soft]
            current[:] = [straight_through(one_hot(index, s.dtype), s) for index, s in zip(indices, soft)]
            pick = torch.randperm(windows.shape[0], generator=generator)[:config.windows]
            hidden = _last_hidden(base_model(windows[pick.to(windows.device)], use_cache=False))
            loss = cosine_error(hidden, targets[pick.to(targets.device)])
            optimizer.zero_grad()
            loss.backward()
            normalise_gradients(logits)
            optimizer.step()
            moved = sum(int((i != j).sum()) for i, j in zip(indices, identity))
            losses.append(loss.item())
            if on_step:
                on_step({"step": step + 1, "steps": config.steps, "loss": loss.item(), "channels_moved": moved})
    per_step = (time.perf_counter() - began) / max(config.steps, 1)
    with torch.no_grad():
        final = [harden(sinkhorn(lg, config.tau_end, config.sinkhorn_iters)) for lg in logits]
    moved = sum(int((i != j).sum()) for i, j in zip(final, identity))
    return [plan.permutation(index) for plan, index in zip(plans, final)], {
        "steps": config.steps, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "channels_moved": moved, "seconds_per_step": round(per_step, 3)}
