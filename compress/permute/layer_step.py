"""The global permutation mode inside the layer-sequential pass: plans from the heuristic start, the decoder
layer as a function of its substituted weights, and the candidates prune/apply.py chooses from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.func import functional_call

from compress.permute.global_mode import GlobalConfig, GroupPlan, block_layout, learn_layer_permutations

__all__ = ["GroupStart", "global_options", "global_note", "layer_forward"]


@dataclass
class GroupStart:
    """A pruned group as the heuristic left it: what the global search starts from."""

    names: list[str]
    stacked: torch.Tensor  # dense weights of the group, stacked, original order
    score: torch.Tensor
    site: str
    stats: Any
    choice: Any  # the heuristic choice (prune/apply.py's _Choice)


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def layer_forward(layer: torch.nn.Module, device) -> Callable[[dict, tuple], torch.Tensor]:
    """forward(weights, (hidden, args, kwargs)): the layer's hidden output with `weights` substituted."""
    dtypes = {name: p.dtype for name, p in layer.named_parameters()}

    def forward(weights: dict, batch: tuple) -> torch.Tensor:
        hidden, args, kwargs = _to(batch, device)
        params = {name: w.to(dtypes[name]) for name, w in weights.items()}
        out = functional_call(layer, params, (hidden, *args), kwargs, strict=False)
        return out[0] if isinstance(out, (tuple, list)) else out

    return forward


def global_options(layer_name: str, layer: torch.nn.Module, starts: list[GroupStart], data, config: GlobalConfig,
                   pattern, heads, prune: Callable[[GroupStart, torch.Tensor], torch.Tensor]):
    """Learn the layer's permutations; return ([(start, perm, pruned weight, info)], training summary)."""
    plans = []
    for start in starts:
        perm = start.choice.perm
        head_block = (heads.head_dim, heads.kv_of_head()) if start.site == "heads" else None
        _, units = block_layout(start.stacked.shape[1], pattern.m, config.block, head_block)
        device = start.stacked.device
        plans.append(GroupPlan(
            params=[n[len(layer_name) + 1:] + ".weight" for n in start.names],
            rows=[layer.get_submodule(n[len(layer_name) + 1:]).weight.shape[0] for n in start.names],
            weight=start.stacked.float()[:, perm.to(device)], score=start.score.float()[:, perm.to(device)],
            start=perm.cpu(), unit_of_block=units.to(device)))
    batches = [(hidden, args, kwargs, data.dense_out[i]) for i, hidden, args, kwargs in data.inputs.batches()
               if i < len(data.dense_out)]
    frozen = [(p, p.requires_grad) for p in layer.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        perms, training = learn_layer_permutations(plans, layer_forward(layer, data.device), batches,
                                                   pattern.n, pattern.m, config)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    found = []
    for start, perm in zip(starts, perms):
        moved = int((perm != start.choice.perm).sum())
        found.append((start, perm, prune(start, perm), {"channels_moved": moved}))
    return found, training


def global_note(report: dict) -> str:
    """One progress line's worth: the layer error before and after, the training loss, groups kept."""
    training, groups = report["training"], report["groups"].values()
    kept = sum(g["kept"] == "global" for g in groups)
    return (f"global permutation: layer error {report['layer_error_heuristic']:.4g} -> {report['layer_error']:.4g}, "
            f"training loss {training['train_loss_first']:.4g} -> {training['train_loss_last']:.4g}, "
            f"kept {kept}/{len(groups)} groups")
