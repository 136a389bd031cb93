"""`--permute global`: channel permutations learned against the dense decoder layer's output (after PermLLM).

Per decoder layer, every pruned group of Linears (one input statistic, stacked when the method's score is
row-independent) gets a block-diagonal permutation on top of its heuristic one: logits of shape
(units, size, size), normalised by Sinkhorn at an annealed temperature. Each step hardens them by Hungarian
matching per block and recomputes the N:M mask from the permuted importance score (Wanda, RIA, or SparseGPT's
|W|·√diag H); the mask, moved back to the original order, prunes the frozen weights — hard forward, Sinkhorn
and a sigmoid soft mask backward (relaxed.py). The loss is the decoder layer's per-token relative output error
against the dense layer's outputs on calibration windows, whose inputs come from the already pruned earlier
layers (the sequential pass). Only the logits learn (normalised gradient steps). The result is the hardened
permutation of the step whose loss, relative to the start's on the same windows, is lowest (else the start).

The logits start at the identity, i.e. at the heuristic permutation. Attention o_proj blocks are the heads,
and heads that share a KV head share one unit, so the result folds into v_proj as the heuristic's does;
down_proj folds into gate/up; the others are carried as an index (fold.py). The caller (prune/apply.py)
prunes with the hardened result — SparseGPT then runs its own update on the permuted weights — and keeps it
per group only where the decoder layer's output error does not rise above its start.

Follows PermLLM (arXiv 2510.10136): block-diagonal learnable permutations (block 64), Sinkhorn normalisation
with a temperature annealed over the steps, Hungarian hardening per block each step with the hard permutation
forward and the Sinkhorn gradient backward, the N:M mask recomputed from the permuted weights' importance,
frozen weights, one permutation per shared input (q/k/v together, gate/up together, o_proj, down_proj), an
objective on the dense model's outputs.
Departs from it: PermLLM's reference code trains the permutations of all decoder layers together against the
dense model's last hidden states (1 − cosine similarity, several epochs over the calibration set, AdamW with a
cosine schedule); here each decoder layer learns alone against its own dense output (per-token relative
error, a few random windows per step), in the layer-sequential pass — cheaper, but blind to how errors grow
downstream. The logits start at the heuristic permutation, not at random, and take
gradient steps normalised by their largest entry (not AdamW). The mask's straight-through gradient
is a per-group sigmoid around the midpoint of the N-th and (N+1)-th scores. Only the mask depends on the
permutation (relaxed_weight says why); PermLLM permutes the weights and inputs themselves. With RIA, whose
score is not row-independent, each of q/k/v and gate/up gets its own permutation (PermLLM: one per input). o_proj's blocks are heads shared by
KV group, so that it folds. SparseGPT learns with the mask-only relaxation; its weight update runs once, after
hardening. A result is kept per group only where the layer's error does not rise; else the heuristic stays.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from compress.permute.fold import inverse
from compress.permute.relaxed import (expand_index, harden, nm_mask_ste, one_hot, permute_blocks, sinkhorn,
                                      soft_nm_mask, straight_through, unpermute_blocks)

__all__ = ["GlobalConfig", "BlockPlan", "GroupPlan", "block_layout", "relaxed_weight", "learn_layer_permutations",
           "annealed_temperature", "normalise_gradients", "token_error", "take_windows"]


@dataclass(frozen=True)
class GlobalConfig:
    steps: int = 40  # optimisation steps per decoder layer
    block: int = 64  # channels per block-diagonal block (attention o_proj: the head width)
    tokens: int = 4096  # calibration tokens per step (whole windows, drawn at random)
    lr: float = 0.5  # the largest logit step per step (0.05 moved no channel in 25 steps on SmolLM2 layers 0-1)
    tau_start: float = 1.0  # Sinkhorn temperature, annealed geometrically to tau_end
    tau_end: float = 0.05
    mask_tau: float = 0.2  # soft-mask temperature, relative to the group's mean |score|
    init: float = 1.0  # starting logit of the heuristic permutation (the identity of every block)
    sinkhorn_iters: int = 20
    keep: str = "best"  # best: the step's hardened permutation whose loss is lowest relative to the start's on
    # the same windows (the start itself if none is lower; PermLLM too keeps its best); last: the final one
    seed: int = 0

    def to_dict(self) -> dict:
        return {"objective": "decoder layer output vs the dense layer (per-token relative error)", **asdict(self),
                "kept_only_where": "the decoder layer's output error does not rise (else the heuristic)"}


class BlockPlan:
    """What every plan of block permutations shares (it has `weight`, `start` and `unit_of_block`)."""

    @property
    def size(self) -> int:
        return self.weight.shape[1] // self.unit_of_block.numel()

    @property
    def units(self) -> int:
        return int(self.unit_of_block.max()) + 1

    def permutation(self, index: torch.Tensor) -> torch.Tensor:
        """The input permutation (original channels) that hardened per-unit indices give."""
        return self.start[expand_index(index.cpu(), self.unit_of_block.cpu())]


@dataclass
class GroupPlan(BlockPlan):
    """One group's learning problem: dense stacked weights and scores, both already in the start order."""

    params: list[str]  # weight names relative to the decoder layer, stacked in this order
    rows: list[int]
    weight: torch.Tensor  # (rows × in), columns in `start` order
    score: torch.Tensor
    start: torch.Tensor  # the starting (heuristic) permutation
    unit_of_block: torch.Tensor


def block_layout(in_features: int, m: int, block: int, head_block: tuple[int, torch.Tensor] | None = None):
    """(size, unit_of_block): heads when `head_block` = (head_dim, kv head of each head); else the largest
    multiple of m that divides in_features and is at most `block`, one unit per block."""
    if head_block is not None:
        size, kv_of_head = head_block
        return size, kv_of_head.long()
    size = max(d for d in range(m, max(block, m) + 1, m) if in_features % d == 0)
    return size, torch.arange(in_features // size)


def relaxed_weight(plan: GroupPlan, p: torch.Tensor, n: int, m: int, mask_tau: float, hard: bool) -> torch.Tensor:
    """The pruned weight (original column order) under block permutation P: the N:M mask of the permuted
    score S·Pᵀ (straight-through when `hard`, else the soft mask alone), moved back by P onto the unpermuted
    weights. Only the mask depends on P: permuting the weights themselves too (W·Pᵀ, back by P) gives the
    same value for a hard P, but its gradient rewards mixing kept columns to imitate pruned ones, which no
    permutation can do (on a test problem it led the search far from its start, to a worse result)."""
    score = permute_blocks(plan.score, p, plan.unit_of_block)
    mask = nm_mask_ste(score, n, m, mask_tau) if hard else soft_nm_mask(score, n, m, mask_tau)
    pruned = plan.weight * unpermute_blocks(mask, p, plan.unit_of_block)
    return pruned[:, inverse(plan.start).to(pruned.device)]


def token_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ‖out − ref‖² / ‖ref‖² (as the engine's per-token layer error)."""
    diff, norm = (out.float() - ref.float()).pow(2).sum(-1), ref.float().pow(2).sum(-1).clamp_min(1e-30)
    return (diff / norm).mean()


def take_windows(obj, index: torch.Tensor, batch: int):
    """`obj` with every tensor whose first dimension is the batch of windows cut to `index` (recursively)."""
    if isinstance(obj, torch.Tensor):
        return obj.index_select(0, index.to(obj.device)) if obj.dim() and obj.shape[0] == batch else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(take_windows(o, index, batch) for o in obj)
    if isinstance(obj, dict):
        return {k: take_windows(v, index, batch) for k, v in obj.items()}
    return obj


def annealed_temperature(config, step: int) -> float:
    """Sinkhorn temperature at `step`: geometric from config.tau_start to config.tau_end over config.steps."""
    return config.tau_start * (config.tau_end / config.tau_start) ** (step / max(config.steps - 1, 1))


def normalise_gradients(logits: list[torch.Tensor]) -> None:
    """Scale each logit tensor's gradient so its strongest entry is 1: a step of lr moves that entry by lr (a
    per-entry normalisation, Adam, moved every entry alike and drifted far on noise)."""
    for lg in logits:
        if lg.grad is not None:
            lg.grad /= lg.grad.abs().max().clamp_min(1e-30)


def _sampler(batches: list, tokens: int, generator: torch.Generator):
    """Draws (hidden, args, kwargs, dense output) of a few whole windows from one random batch."""
    def draw():
        hidden, args, kwargs, ref = batches[int(torch.randint(len(batches), (1,), generator=generator))]
        windows = hidden.shape[0]
        count = min(windows, max(1, tokens // max(hidden.shape[1], 1)))
        if count == windows or windows == 1:
            return hidden, args, kwargs, ref
        index = torch.randperm(windows, generator=generator)[:count].sort().values
        return (take_windows(hidden, index, windows), take_windows(args, index, windows),
                take_windows(kwargs, index, windows), take_windows(ref, index, windows))
    return draw


def learn_layer_permutations(plans: list[GroupPlan], forward: Callable[[dict, tuple], torch.Tensor],
                             batches: list, n: int, m: int, config: GlobalConfig) -> tuple[list[torch.Tensor], dict]:
    """Learn one block-diagonal permutation per plan; returns (input permutations, training summary).

    `forward(weights, (hidden, args, kwargs))` runs the decoder layer with those weights (by relative name)
    substituted; `batches` are (hidden, args, kwargs, dense output) of the calibration windows."""
    generator = torch.Generator().manual_seed(config.seed)
    draw = _sampler(batches, config.tokens, generator)
    logits = [(config.init * torch.eye(plan.size, device=plan.weight.device)).repeat(plan.units, 1, 1)
              .requires_grad_() for plan in plans]
    optimizer = torch.optim.SGD(logits, lr=config.lr)
    with torch.no_grad():
        identity = [torch.arange(plan.size, device=plan.weight.device).repeat(plan.units, 1) for plan in plans]
        start = {}
        for plan, index in zip(plans, identity):
            start.update(zip(plan.params, relaxed_weight(plan, one_hot(index), n, m, config.mask_tau, True)
                             .split(plan.rows)))
    losses, changed, best = [], 0, (1.0, identity, 0)
    with torch.enable_grad():
        for step in range(config.steps):
            tau = annealed_temperature(config, step)
            weights, indices = {}, []
            for plan, lg in zip(plans, logits):
                soft = sinkhorn(lg, tau, config.sinkhorn_iters)
                indices.append(harden(soft))
                p = straight_through(one_hot(indices[-1], soft.dtype), soft)
                weights.update(zip(plan.params, relaxed_weight(plan, p, n, m, config.mask_tau, True).split(plan.rows)))
            hidden, args, kwargs, ref = draw()
            loss = token_error(forward(weights, (hidden, args, kwargs)), ref)
            if any(bool((i != j).any()) for i, j in zip(indices, identity)):
                # the forward is exact for this hard permutation: compare it with the start on the same windows
                with torch.no_grad():
                    ratio = loss.item() / max(token_error(forward(start, (hidden, args, kwargs)), ref).item(), 1e-30)
                if ratio < best[0]:
                    best = (ratio, indices, step)
            optimizer.zero_grad()
            loss.backward()
            normalise_gradients(logits)
            optimizer.step()
            losses.append(loss.item())
    perms = []
    with torch.no_grad():
        final = [harden(sinkhorn(lg, config.tau_end, config.sinkhorn_iters)) for lg in logits]
        chosen = final if config.keep == "last" else best[1]
        for plan, index in zip(plans, chosen):
            changed += int((index != torch.arange(plan.size, device=index.device)).sum())
            perms.append(plan.permutation(index))
    return perms, {"steps": config.steps, "train_loss_first": losses[0] if losses else None,
                   "train_loss_last": losses[-1] if losses else None, "best_step": best[2],
                   "best_ratio": best[0], "channels_moved": changed}
