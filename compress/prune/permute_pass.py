"""`--permute global`'s model pass, run after the layer-sequential pass has pruned every layer.

The dense model's final hidden states on the calibration windows are the target (every group's dense weights
substituted back); compress/permute/model_pass.py learns all groups' block permutations at once on top of the
permutations the sequential pass chose; each group is then pruned again by its method with the learned
permutation (SparseGPT runs its update on the newly permuted weights, with the statistics of the sequential
pass). A method whose pruned weights are not a mask of the dense ones (SparseGPT) learns on the weights its
update produced instead (Method.learn_weights), and a second candidate prunes those weights with the learned
masks directly. The best candidate is kept only if the pruned model's objective over all calibration windows is
lower than the sequential pass's (all exact forwards of the real pruned weights); else the model is left as it
was.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from compress.errors import BadInput
from compress.model.placement import is_dispatched
from compress.model.roles import HeadLayout
from compress.pattern import nm_mask
from compress.permute import unpermute
from compress.permute.model_pass import final_hidden, learn_model_permutations, model_objective, plans_of

__all__ = ["check_model_pass", "run_model_pass", "model_pass_line"]


def check_model_pass(model) -> None:
    if is_dispatched(model):
        raise BadInput("--permute global's model pass needs the whole model on one device; "
                       "use --perm-model-steps 0 with --device-map", key="perm_model_steps")


def _split(names, weight: torch.Tensor, model, cut: int) -> dict:
    rows = [model.get_submodule(n).weight.shape[0] for n in names]
    return {n[cut:] + ".weight": part for n, part in zip(names, weight.split(rows))}


def run_model_pass(model, starts: list, result, config, calibration: torch.Tensor, device, prune_in_order: Callable,
                   apply: Callable, on_note: Callable[[str], None] | None = None,
                   learn_on: Callable | None = None) -> dict:
    """Learn, prune again and keep if better; returns the pass's report (objective before and after, kept).

    `learn_on(start, perm)`, when given, is the group start the pass learns on (its weights and scores replaced)."""
    started = time.perf_counter()
    pass_config = config.model_pass_config()
    prefix = getattr(model, "base_model_prefix", "")
    base, cut = model.base_model, len(prefix) + 1 if prefix else 0
    home = next(model.parameters()).device
    model.to(device)
    try:
        windows = calibration.to(device)
        dense = {}
        for start in starts:
            dense.update(_split(start.names, start.stacked.to(device), model, cut))
        with torch.no_grad():
            targets = torch.cat([final_hidden(base, dense, windows[lo:lo + pass_config.windows])
                                 for lo in range(0, windows.shape[0], pass_config.windows)])
        del dense
        before = model_objective(base, {}, windows, targets, pass_config.windows)
        perms = [result.permutations[start.names[0]] for start in starts]
        learning = [learn_on(start, perm) for start, perm in zip(starts, perms)] if learn_on else starts
        pattern, heads = config.parsed_pattern, HeadLayout.of(model.config)
        plans = plans_of(model, prefix, [_on(s, device) for s in learning], perms, pattern, pass_config.block, heads)

        def step_line(entry: dict) -> None:
            if on_note and (entry["step"] == 1 or entry["step"] % 5 == 0 or entry["step"] == entry["steps"]):
                on_note(f"permutation model pass: step {entry['step']}/{entry['steps']}, loss {entry['loss']:.4g}, "
                        f"channels moved {entry['channels_moved']}")

        learned, training = learn_model_permutations(base, plans, windows, targets, pattern.n, pattern.m,
                                                     pass_config, step_line)
        del plans
        candidates = {"re-pruned": [prune_in_order(start, perm) for start, perm in zip(starts, learned)]}
        if learn_on:
            candidates["masked"] = [_masked(start, perm, pattern) for start, perm in zip(learning, learned)]
        del learning
        objectives = {}
        for label, pruned in candidates.items():
            weights = {}
            for start, weight in zip(starts, pruned):
                weights.update(_split(start.names, weight.to(device), model, cut))
            objectives[label] = model_objective(base, weights, windows, targets, pass_config.windows)
            del weights
    finally:
        model.to(home)
    best = min(objectives, key=objectives.get)
    after = objectives[best]
    kept = after < before
    if kept:
        for start, perm, weight in zip(starts, learned, candidates[best]):
            apply(start, perm, weight)
    report = {**pass_config.to_dict(), **training, "objective_start": before, "objective_learned": after,
              "kept": "learned" if kept else "start", "groups": len(starts),
              "seconds": round(time.perf_counter() - started, 1)}
    if learn_on:
        report.update(learned_weights=best, candidates=objectives)
    if on_note:
        on_note(model_pass_line(report))
    return report


def _masked(start, perm: torch.Tensor, pattern) -> torch.Tensor:
    """`start`'s weights pruned by the N:M mask of its scores in `perm` order (original column order)."""
    perm = perm.to(start.stacked.device)
    return unpermute(start.stacked[:, perm] * nm_mask(start.score[:, perm], pattern.n, pattern.m), perm)


def _on(start, device):
    from dataclasses import replace

    return replace(start, stacked=start.stacked.to(device), score=start.score.to(device))


def model_pass_line(report: dict) -> str:
    return (f"permutation model pass: objective {report['objective_start']:.4g} -> {report['objective_learned']:.4g} "
            f"over {report['groups']} groups, kept the {report['kept']} permutations")
