"""Prune a factorized model's experts (N:M or unstructured), each with the statistics of its own tokens.

Layer by layer on the engine: the MoE's inputs are captured, routed as the model routes them, and each
expert's gate/up weight (2m, hidden) is pruned by the method of compress/prune/ with the statistic of the
tokens that chose that expert; its down weight (hidden, m) then with the statistic of its neurons,
act(gate)·up, computed with the pruned gate/up (as the layer will run). The routers and everything outside
the experts stay dense. An expert no calibration token chose is pruned with the statistics of every token
of its layer (the report lists it). The down weight carries the fold (a constant factor): masks and
SparseGPT's updates do not depend on it.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.calibrate.collectors import COLLECTORS
from compress.calibrate.engine import LayerStep, walk_layers
from compress.errors import BadInput
from compress.factorize.moe import FactorizedMLP, route
from compress.model.layers import decoder_layers
from compress.prune import METHODS
from compress.prune.apply import PruneResult, method_inputs
from compress.prune.config import PruneConfig

__all__ = ["check_expert_pruning", "prune_experts"]


def check_expert_pruning(config: PruneConfig) -> None:
    """Options that select or permute Linears by name have no meaning for experts."""
    for key in ("targets", "ignore"):
        if getattr(config, key):
            raise BadInput(f"{key} does not apply after factorize: every expert's gate/up and down are pruned",
                           key=key)
    if config.permute != "none":
        raise BadInput("permute does not apply after factorize (experts are pruned without permutation)",
                       key="permute")


def _statistic(method, weight: torch.Tensor, tokens: torch.Tensor):
    if method.collector is None:
        return None
    stats = COLLECTORS[method.collector](weight.shape[1], weight.device)
    stats.update(tokens)
    return stats


def _moe_of(layer: nn.Module, name: str) -> FactorizedMLP:
    found = [m for m in layer.modules() if isinstance(m, FactorizedMLP)]
    if len(found) != 1:
        raise BadInput(f"{name}: expected one factorized MLP to prune, found {len(found)}")
    return found[0]


def prune_experts(model: nn.Module, config: PruneConfig, calibration: torch.Tensor | None,
                  device: str | torch.device = "cpu",
                  on_layer: Callable[[LayerStep, int], None] | None = None) -> PruneResult:
    """Prune every FactorizedMLP's experts in place; the report names them layer.mlp.experts.E.{gate_up,down}."""
    started = time.perf_counter()
    device = torch.device(device)
    check_expert_pruning(config)
    method, pattern, options = METHODS[config.method], config.parsed_pattern, config.options
    layers = decoder_layers(model)
    inputs, capture_seconds = method_inputs(method, model, layers, calibration, config.calib_batch, device, started)
    result = PruneResult([], {}, 0.0, capture_seconds)

    def change_layer(index, name, layer, data) -> dict:
        moe = _moe_of(layer, name)
        seen = []
        if inputs is not None:
            handle = moe.register_forward_hook(lambda _m, args, _out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
            try:
                data()
            finally:
                handle.remove()
        x = torch.cat(seen) if seen else None
        chosen = route(moe.router(x), moe.top_k)[1] if x is not None else None
        tokens, without = [], []
        for e in range(moe.num_experts):
            mine = x[(chosen == e).any(-1)] if x is not None else None
            if mine is not None and mine.shape[0] == 0:
                mine = x
                without.append(e)
            tokens.append(0 if mine is None or e in without else mine.shape[0])
            gate_up = method.prune(moe.gate_up[e], _statistic(method, moe.gate_up[e], mine), pattern, options)
            moe.gate_up.data[e] = gate_up.to(moe.gate_up.dtype)
            neurons = None
            if mine is not None:
                gate, up = F.linear(mine, moe.gate_up[e]).chunk(2, dim=-1)
                neurons = moe.act_fn(gate) * up
            down = method.prune(moe.down[e], _statistic(method, moe.down[e], neurons), pattern, options)
            moe.down.data[e] = down.to(moe.down.dtype)
        zeros = numel = 0
        prefix = [n for n, m in layer.named_modules() if m is moe][0]
        for e in range(moe.num_experts):
            for part, weight in (("gate_up", moe.gate_up[e]), ("down", moe.down[e])):
                z, n = int((weight == 0).sum()), weight.numel()
                result.linears[f"{name}.{prefix}.experts.{e}.{part}"] = {"shape": list(weight.shape), "numel": n,
                                                                         "zeros": z}
                zeros, numel = zeros + z, numel + n
        return {"sparsity": zeros / max(numel, 1), "tokens_per_expert": tokens, "experts_without_tokens": without}

    result.steps = walk_layers(layers, inputs, device, change_layer,
                               on_done=(lambda step: on_layer(step, len(layers))) if on_layer else None)
    result.seconds = time.perf_counter() - started
    return result
