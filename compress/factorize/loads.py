"""How the routers spread tokens over the experts on any text: the share of top-k picks per expert, per layer."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from compress.factorize.moe import FactorizedMLP

__all__ = ["count_picks", "max_load_ratio"]


@contextmanager
def count_picks(model: nn.Module):
    """While inside, every FactorizedMLP's router picks are counted; yields {mlp name: (experts,) counts}
    (int64, filled as the model runs)."""
    counts, handles = {}, []
    for name, moe in model.named_modules():
        if isinstance(moe, FactorizedMLP):
            counts[name] = torch.zeros(moe.num_experts, dtype=torch.long)

            def hook(_router, _args, logits, name=name, top_k=moe.top_k):
                picked = logits.detach().reshape(-1, logits.shape[-1]).float().topk(top_k, dim=-1).indices
                counts[name] += torch.bincount(picked.flatten().cpu(), minlength=counts[name].numel())
            handles.append(moe.router.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def max_load_ratio(counts: torch.Tensor) -> float:
    """The busiest expert's picks over its fair share (1.0: perfectly even)."""
    return (counts.max() * counts.numel() / counts.sum().clamp_min(1)).item()
