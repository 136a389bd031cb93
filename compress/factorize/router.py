"""Stage A of router training: fit one layer's router to Prior-Approximate Router (PAR) pseudo-labels.

Teacher: the layer's dense FFN output on its calibration activations. Label of a token: the k experts
whose routed output (the mean of their outputs ×fold, i.e. (fold/k)·Σ of the unscaled ones) is closest to
the teacher in squared error; exact over all k-subsets where there are few, greedy (add the expert that
lowers the error most, k times) otherwise. Loss per batch:
  par_weight · CE(uniform over the label's k experts, softmax(router))
  + balance_weight · E · Σ_e f_e · P_e     (Switch/Mixtral balance: f_e share of top-k picks, P_e mean prob)
Experts stay frozen, so labels are computed once. Deterministic under `seed`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from compress.factorize.moe import FactorizedMLP, route

__all__ = ["RouterTraining", "held_out_split", "par_labels", "router_losses", "train_router", "routed_error"]

EXACT_SUBSETS = 128  # search every k-subset up to this many, greedy beyond


@dataclass(frozen=True)
class RouterTraining:
    steps: int = 200
    lr: float = 1e-3
    batch_tokens: int = 1024
    par_weight: float = 0.05
    balance_weight: float = 0.01
    held_out: float = 0.1  # share of the layer's tokens kept out of training, to measure agreement
    seed: int = 0


def held_out_split(tokens: int, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) row indices: a seeded permutation, the last `held_out` share kept out."""
    order = torch.randperm(tokens, generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(round(tokens * (1 - held_out)))) if tokens > 1 else 1
    return order[:cut], order[cut:]


def _chunks(total: int, per: int):
    for start in range(0, total, per):
        yield slice(start, min(start + per, total))


@torch.no_grad()
def par_labels(moe: FactorizedMLP, inputs: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(tokens, k) expert indices: the PAR pseudo-label of every token."""
    n, k = moe.num_experts, moe.top_k
    subsets = None
    if math.comb(n, k) <= EXACT_SUBSETS:
        subsets = torch.tensor(list(itertools.combinations(range(n), k)), device=inputs.device)  # (C, k)
    width = subsets.shape[0] if subsets is not None else n
    per = max(16, 2**24 // (width * inputs.shape[1]))
    labels = []
    for part in _chunks(inputs.shape[0], per):
        outs = moe.all_experts(inputs[part]).float()  # (t, n, h)
        target = (teacher[part] - moe.shared_output(inputs[part])).float()  # what the routed experts must add
        if subsets is not None:
            err = (outs[:, subsets].mean(2) - target[:, None]).pow(2).sum(-1)  # (t, C)
            labels.append(subsets[err.argmin(1)])
            continue
        chosen = torch.zeros(outs.shape[0], 0, dtype=torch.long, device=outs.device)
        total = torch.zeros_like(target)
        for j in range(k):
            err = ((total[:, None] + outs) / (j + 1) - target[:, None]).pow(2).sum(-1)  # (t, n)
            if j:
                err.scatter_(1, chosen, float("inf"))
            pick = err.argmin(1, keepdim=True)
            chosen = torch.cat([chosen, pick], 1)
            total += outs.gather(1, pick[..., None].expand(-1, 1, outs.shape[-1]))[:, 0]
        labels.append(chosen)
    return torch.cat(labels)


@torch.no_grad()
def routed_error(moe: FactorizedMLP, inputs: torch.Tensor, teacher: torch.Tensor) -> float:
    """‖MoE(x) − FFN(x)‖² / ‖FFN(x)‖² over the tokens."""
    err = ref = 0.0
    for part in _chunks(inputs.shape[0], 4096):
        out = moe(inputs[part]).float()
        err += (out - teacher[part].float()).pow(2).sum().item()
        ref += teacher[part].float().pow(2).sum().item()
    return err / max(ref, 1e-30)


def router_losses(logits: torch.Tensor, labels: torch.Tensor | None, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(PAR cross-entropy to the labels (0 without labels), balance term) of router logits (tokens, n)."""
    n = logits.shape[1]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    par = log_probs.new_zeros(())
    if labels is not None:
        target = torch.zeros_like(log_probs).scatter_(1, labels, 1.0 / labels.shape[1])
        par = -(target * log_probs).sum(-1).mean()
    picked = torch.topk(logits, top_k, dim=-1).indices
    share = torch.zeros(n, device=logits.device).scatter_add_(
        0, picked.flatten(), torch.ones(picked.numel(), device=logits.device)) / picked.numel()
    balance = n * (share * log_probs.exp().mean(0)).sum()
    return par, balance


def _agreement(logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> float:
    """Mean share of the label's experts that the router's top-k picks."""
    picked = torch.topk(logits, top_k, dim=-1).indices
    hits = (picked[:, :, None] == labels[:, None, :]).any(-1).float().sum(-1)
    return (hits / top_k).mean().item()


@dataclass
class RouterFit:
    losses: list[dict] = field(default_factory=list)
    held_out_agreement: float | None = None
    chance_agreement: float = 0.0
    held_out_error: float | None = None  # routed vs dense FFN, relative, on held-out tokens
    load: list[float] = field(default_factory=list)  # share of top-k picks per expert, held-out tokens

    def to_dict(self) -> dict:
        return {"losses": self.losses, "held_out_agreement": self.held_out_agreement,
                "chance_agreement": self.chance_agreement, "held_out_error": self.held_out_error, "load": self.load}


def train_router(moe: FactorizedMLP, inputs: torch.Tensor, teacher: torch.Tensor, settings: RouterTraining,
                 log_every: int = 50) -> RouterFit:
    """Fit `moe.router` in place on (inputs, teacher) rows; return losses, held-out agreement and load."""
    generator = torch.Generator().manual_seed(settings.seed)
    train, held = (part.to(inputs.device) for part in held_out_split(inputs.shape[0], settings.held_out, settings.seed))
    torch.randperm(inputs.shape[0], generator=generator)  # keeps the mini-batch draws of earlier versions
    labels = par_labels(moe, inputs, teacher) if settings.steps else None  # no steps: agreement is not measured
    fit = RouterFit(chance_agreement=moe.top_k / moe.num_experts)
    weight = moe.router.weight
    if settings.steps:
        weight.requires_grad_(True)
        optimizer = torch.optim.Adam([weight], lr=settings.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
        x_train, y_train = inputs[train].float(), labels[train]
        for step in range(settings.steps):
            pick = torch.randint(0, x_train.shape[0], (min(settings.batch_tokens, x_train.shape[0]),),
                                 generator=generator).to(inputs.device)
            with torch.enable_grad():
                par, balance = router_losses(F.linear(x_train[pick], weight.float()), y_train[pick], moe.top_k)
                loss = settings.par_weight * par + settings.balance_weight * balance
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            schedule.step()
            if step % log_every == 0 or step == settings.steps - 1:
                fit.losses.append({"step": step, "par": round(par.item(), 5), "balance": round(balance.item(), 5)})
        weight.requires_grad_(False)
    if held.numel():
        with torch.no_grad():
            logits = moe.router(inputs[held]).float()
            if labels is not None:
                fit.held_out_agreement = _agreement(logits, labels[held], moe.top_k)
            fit.held_out_error = routed_error(moe, inputs[held], teacher[held])
            picked = route(logits, moe.top_k)[1].flatten()
            fit.load = (torch.bincount(picked, minlength=moe.num_experts).float() / picked.numel()).tolist()
    return fit
