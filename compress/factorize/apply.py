"""Factorize a model in place: every decoder layer's gated MLP becomes a FactorizedMLP, its router fitted
on the layer-sequential engine (each layer sees the activations of the already factorized layers); with
train router+experts the experts and routers are then trained end to end (finetune.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from compress.calibrate.engine import LayerStep, capture_calibration, walk_layers
from compress.errors import BadInput
from compress.factorize.analytic import analytic_router, expert_mass
from compress.factorize.carve import carve, neuron_markers
from compress.factorize.config import FactorizeConfig
from compress.factorize.finetune import EndToEndTraining, teacher_targets, train_experts
from compress.factorize.mlp import GatedMLP, find_gated_mlp
from compress.factorize.moe import FactorizedMLP
from compress.factorize.refit import refit_down
from compress.factorize.router import RouterTraining, held_out_split, train_router
from compress.factorize.split import activity_pattern, split_neurons
from compress.model.layers import decoder_layers

__all__ = ["FactorizeResult", "check_factorize", "factorize_model", "factorized_mlps"]

ACTIVITY_TOKENS = 8192  # tokens sampled for the co-activation split


@dataclass
class FactorizeResult:
    steps: list[LayerStep] = field(default_factory=list)
    seconds: float = 0.0
    capture_seconds: float = 0.0
    tokens: int = 0  # calibration tokens each router saw (train + held out)
    end_to_end: dict | None = None  # stage B: losses, seconds, tokens

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "capture_seconds": round(self.capture_seconds, 3),
                "tokens": self.tokens, "end_to_end": self.end_to_end,
                "layers": [{"index": s.index, "name": s.name, "seconds": round(s.seconds, 3),
                            "relative_error": s.relative_error, "token_error": s.token_error, "info": s.info}
                           for s in self.steps]}


def check_factorize(model: nn.Module, config: FactorizeConfig) -> list[tuple[str, GatedMLP]]:
    """Every layer's gated MLP, or BadInput naming what cannot be split (or distilled)."""
    vocabulary = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    if config.train == "router+experts" and vocabulary is not None and config.distill_top > vocabulary:
        raise BadInput(f"the distillation keeps the top {config.distill_top} next-token probabilities, but the "
                       f"vocabulary has {vocabulary} tokens", key="distill_top")
    found = []
    for name, layer in decoder_layers(model):
        mlp = find_gated_mlp(layer, name)
        if mlp.intermediate % config.groups:
            raise BadInput(f"(experts + shared) × granularity = {config.groups} does not divide the intermediate "
                           f"size {mlp.intermediate} of {mlp.name}", key="experts")
        found.append((name, mlp))
    return found


def factorized_mlps(model: nn.Module) -> dict[str, FactorizedMLP]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FactorizedMLP)}


class _Capture:
    """The MLP's inputs and dense outputs while the layer's data runs."""

    def __init__(self, module: nn.Module):
        self.inputs, self.outputs = [], []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, args, output):
        x = args[0]
        self.inputs.append(x.detach().reshape(-1, x.shape[-1]).float())
        self.outputs.append(output.detach().reshape(-1, output.shape[-1]).float())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.handle.remove()
        return torch.cat(self.inputs), torch.cat(self.outputs)


def _sample(inputs: torch.Tensor, layer_seed: int) -> torch.Tensor:
    pick = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(layer_seed))[:ACTIVITY_TOKENS]
    return inputs[pick.to(inputs.device)]


def _groups(config: FactorizeConfig, mlp: GatedMLP, inputs: torch.Tensor | None,
            layer_seed: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(shared neurons or None, routed groups (experts, m)) of one layer's FFN."""
    shared_neurons = mlp.intermediate * config.shared // (config.experts + config.shared)
    if config.split == "carve" or shared_neurons:
        markers = neuron_markers(_sample(inputs, layer_seed), mlp.gate.weight, mlp.up.weight, mlp.act_fn,
                                 config.activity_top)
        carving = carve(markers, shared_neurons, config.total_experts)
        if config.split == "carve":
            return (carving.shared if shared_neurons else None), carving.groups.cpu()
        rest = torch.cat(list(carving.groups)).sort().values
    else:
        rest = torch.arange(mlp.intermediate)
    activity = None
    if config.split == "coactivation":
        activity = activity_pattern(_sample(inputs, layer_seed).to(mlp.gate.weight.dtype), mlp.gate, mlp.up,
                                    mlp.act_fn)[rest.to(inputs.device)]
    gate, up = (_rows(mlp.gate, rest), _rows(mlp.up, rest)) if config.split == "cluster" else (None, None)
    local = split_neurons(config.split, rest.numel(), config.total_experts, layer_seed, gate, up, activity)
    return (carving.shared if shared_neurons else None), rest[local.cpu()]


def _rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    picked = nn.Linear(linear.in_features, rows.numel(), bias=False, device="meta")
    picked.weight = nn.Parameter(linear.weight.detach()[rows.to(linear.weight.device)], requires_grad=False)
    return picked


def factorize_model(model: nn.Module, config: FactorizeConfig, calibration: torch.Tensor | None = None,
                    device: str | torch.device = "cpu",
                    on_layer: Callable[[LayerStep, int], None] | None = None,
                    on_step: Callable[[dict], None] | None = None) -> FactorizeResult:
    """Split every decoder layer's MLP into experts and fit the routers (stage A) in place; then stage B
    where config.train is router+experts."""
    started = time.perf_counter()
    device = torch.device(device)
    check_factorize(model, config)
    layers = decoder_layers(model)
    result = FactorizeResult()
    inputs = teacher = None
    if config.needs_calibration():
        if calibration is None:
            raise BadInput("factorize with the analytic router, shared neurons, router steps, the carve or coactivation "
                           "split or router+experts training needs calibration data", key="calibrate")
        if config.train == "router+experts":
            teacher = teacher_targets(model, calibration, config.distill_top, device, config.expert_batch)
        inputs = capture_calibration(model, layers, calibration, config.calib_batch, device)
        result.capture_seconds = time.perf_counter() - started
        result.tokens = calibration.numel()
    training = RouterTraining(steps=config.router_steps, lr=config.lr, batch_tokens=config.batch_tokens,
                              par_weight=config.par_weight, balance_weight=config.balance_weight, seed=config.seed)

    def change_layer(index, name, layer, data) -> dict:
        mlp = find_gated_mlp(layer, name)
        x = teacher = None
        if inputs is not None:
            capture = _Capture(mlp.module)
            try:
                data()
            finally:
                x, teacher = capture.tensors()
        layer_seed = config.seed * 100003 + index
        shared, groups = _groups(config, mlp, x, layer_seed)
        where = mlp.gate.weight.device
        moe = FactorizedMLP.from_dense(mlp.gate, mlp.up, mlp.down, mlp.act_fn, groups.to(where), config.total_top_k,
                                       config.fold, None if shared is None else shared.to(where))
        info = {"experts": config.total_experts, "top_k": config.total_top_k, "fold": config.fold,
                "shared_neurons": moe.shared_width}
        fitting = held_out_split(x.shape[0], training.held_out, layer_seed)[0].to(x.device) if x is not None else None
        if config.analytic_routing():  # on the tokens train_router does not hold out
            sample = _sample(x[fitting], layer_seed)
            mass = expert_mass(sample, mlp.gate.weight, mlp.up.weight, mlp.down.weight, mlp.act_fn, groups.to(where))
            router = analytic_router(sample, mass, config.total_top_k, config.balance)
            moe.router.weight.copy_(router.weight.to(moe.router.weight))
            info["calibration_load"] = router.load
        if config.refits and x is not None and config.total_top_k < config.total_experts:
            info["refit_residual"] = refit_down(moe, x[fitting], teacher[fitting], config.refit_ridge)
        if x is not None and (config.router_steps or config.analytic_routing()):
            fit = train_router(moe, x.to(moe.gate_up.dtype), teacher, replace(training, seed=layer_seed))
            info.update(fit.to_dict())
        setattr(mlp.parent, mlp.attribute, moe)
        return info

    result.steps = walk_layers(layers, inputs, device, change_layer,
                               on_done=(lambda step: on_layer(step, len(layers))) if on_layer else None)
    if teacher is not None:
        settings = EndToEndTraining(steps=config.expert_steps, lr=config.expert_lr, batch=config.expert_batch,
                                    distill_top=config.distill_top, distill_weight=config.distill_weight,
                                    lm_weight=config.lm_weight, par_weight=config.par_weight,
                                    balance_weight=config.balance_weight, seed=config.seed)
        result.end_to_end = train_experts(model, calibration, teacher, settings, device, on_step).to_dict()
    result.seconds = time.perf_counter() - started
    return result
