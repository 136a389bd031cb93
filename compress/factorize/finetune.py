"""Stage B of FactorLLM: train the experts and routers end to end, everything else frozen.

Teacher: before any FFN is split, the dense model's top-`distill_top` next-token probabilities on the
calibration windows are kept, the rest of the vocabulary as one "other" bucket (a few MB, so no second model
is held). Loss:
  distill_weight · CE(teacher's K + 1 buckets, student's)  +  lm_weight · CE(next token)
  + par_weight · PAR  +  balance_weight · balance          (compress/factorize/router.py, mean over layers)
PAR labels come from each layer's FFN as it was when this stage began (frozen copies of its experts: their
sum, the fold undone, is the dense FFN on the layer's current input). Adam with a cosine schedule,
deterministic under a seed. The same loop fine-tunes any parameter set (`train_end_to_end`), which is how
the benchmark's dense baseline is fine-tuned on the same tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.evaluate import on_device
from compress.factorize.moe import FactorizedMLP
from compress.factorize.router import par_labels, router_losses

__all__ = ["EndToEndTraining", "Teacher", "bucket_cross_entropy", "teacher_targets", "train_end_to_end", "train_experts"]


@dataclass(frozen=True)
class EndToEndTraining:
    steps: int = 100
    lr: float = 1e-4
    batch: int = 4  # calibration windows per step
    distill_top: int = 64
    distill_weight: float = 1.0
    lm_weight: float = 0.0
    par_weight: float = 0.05
    balance_weight: float = 0.01
    seed: int = 0


@dataclass
class Teacher:
    probs: torch.Tensor  # (windows, length - 1, K) the top-K next-token probabilities (the rest: 1 - their sum)
    index: torch.Tensor  # (windows, length - 1, K) their token ids


@dataclass
class EndToEndFit:
    losses: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0  # tokens seen (steps × batch × window length)

    def to_dict(self) -> dict:
        return {"losses": self.losses, "seconds": round(self.seconds, 3), "tokens": self.tokens}


@torch.no_grad()
def teacher_targets(model: nn.Module, calibration: torch.Tensor, top: int, device: torch.device,
                    batch: int = 4) -> Teacher:
    probs, index = [], []
    with on_device(model, device):
        where = next(model.parameters()).device
        for ids in calibration.split(batch):
            logits = model(ids.to(where)).logits[:, :-1].float()
            values, token = torch.log_softmax(logits, -1).topk(top, dim=-1)
            probs.append(values.exp().cpu())
            index.append(token.cpu())
    return Teacher(torch.cat(probs), torch.cat(index))


def bucket_cross_entropy(log_probs: torch.Tensor, probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Mean CE of the student's log-probabilities against the teacher's top-K + "other" buckets."""
    student = log_probs.gather(-1, index)
    tail = (1 - probs.sum(-1)).clamp(min=0)
    student_tail = torch.log1p(-student.exp().sum(-1).clamp(max=1 - 1e-6))
    return -((probs * student).sum(-1) + tail * student_tail).mean()


class _RouterTerms:
    """Per forward: PAR and balance terms of every factorized MLP, labels from frozen copies of its experts."""

    def __init__(self, moes: dict[str, FactorizedMLP], settings: EndToEndTraining):
        self.settings, self.par, self.balance, self.handles = settings, [], [], []
        for moe in moes.values():
            frozen = FactorizedMLP(moe.gate_up.detach().clone(), moe.down.detach().clone(), moe.act_fn, moe.top_k,
                                   moe.groups, moe.fold)
            self.handles.append(moe.register_forward_hook(self._hook(frozen)))

    def _hook(self, frozen: FactorizedMLP):
        def hook(module, args, _output):
            x = args[0].reshape(-1, args[0].shape[-1])
            with torch.no_grad():
                labels = par_labels(frozen, x, frozen.dense(x)) if self.settings.par_weight else None
            logits = module.router(x.detach())  # these terms train the router, not the layers below it
            par, balance = router_losses(logits, labels, module.top_k)
            self.par.append(par)
            self.balance.append(balance)
        return hook

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        par, balance = torch.stack(self.par).mean(), torch.stack(self.balance).mean()
        self.par, self.balance = [], []
        return par, balance

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def train_end_to_end(model: nn.Module, params: list[nn.Parameter], calibration: torch.Tensor, teacher: Teacher | None,
                     settings: EndToEndTraining, device: torch.device,
                     on_step: Callable[[dict], None] | None = None, log_every: int = 10) -> EndToEndFit:
    """Adam on `params` only (the rest frozen) over random batches of the calibration windows."""
    started = time.perf_counter()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    moes = {name: m for name, m in model.named_modules() if isinstance(m, FactorizedMLP)}
    terms = _RouterTerms(moes, settings) if moes and (settings.par_weight or settings.balance_weight) else None
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, settings.steps))
    fit = EndToEndFit()
    try:
        with on_device(model, device), torch.enable_grad():
            where = next(model.parameters()).device
            for step in range(settings.steps):
                pick = torch.randperm(calibration.shape[0], generator=generator)[:settings.batch]
                ids = calibration[pick].to(where)
                log_probs = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
                parts = {}
                if teacher is not None and settings.distill_weight:
                    parts["distill"] = bucket_cross_entropy(log_probs, teacher.probs[pick].to(where),
                                                            teacher.index[pick].to(where))
                if settings.lm_weight:
                    parts["lm"] = -log_probs.gather(-1, ids[:, 1:, None]).mean()
                if terms is not None:
                    parts["par"], parts["balance"] = terms.take()
                weights = {"distill": settings.distill_weight, "lm": settings.lm_weight, "par": settings.par_weight,
                           "balance": settings.balance_weight}
                loss = sum(weights[name] * value for name, value in parts.items())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                fit.tokens += ids.numel()
                if step % log_every == 0 or step == settings.steps - 1:
                    elapsed = time.perf_counter() - started
                    entry = {"step": step, "steps": settings.steps,
                             **{name: round(value.item(), 5) for name, value in parts.items()},
                             "loss": round(loss.item(), 5), "tokens_per_s": round(fit.tokens / max(elapsed, 1e-9), 1)}
                    fit.losses.append(entry)
                    if on_step:
                        on_step(entry)
    finally:
        if terms is not None:
            terms.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    fit.seconds = time.perf_counter() - started
    return fit


def train_experts(model: nn.Module, calibration: torch.Tensor, teacher: Teacher, settings: EndToEndTraining,
                  device: torch.device, on_step: Callable[[dict], None] | None = None) -> EndToEndFit:
    """Stage B: every factorized MLP's experts (shared part included) and router."""
    params = [p for m in model.modules() if isinstance(m, FactorizedMLP)
              for p in (m.gate_up, m.down, m.router.weight, m.shared_gate_up, m.shared_down) if p is not None]
    return train_end_to_end(model, params, calibration, teacher, settings, device, on_step)
