"""Prune a loaded model in place, layer by layer: the library entry point behind `compress prune`."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from compress.calibrate.collectors import collect_inputs
from compress.calibrate.engine import LayerStep, capture_layer_inputs, walk_layers
from compress.errors import BadInput
from compress.models import decoder_layers, target_linears
from compress.prune.method import Method
from compress.prune.pattern import Pattern

__all__ = ["PruneConfig", "PruneResult", "prune_model", "check_config"]


@dataclass
class PruneConfig:
    method: str = "wanda"
    pattern: Pattern = field(default_factory=lambda: Pattern(n=2, m=4))
    targets: str | None = None  # regex searched in full module names; default: every Linear in a decoder layer
    ignore: str | None = None
    options: dict = field(default_factory=dict)  # method options: blocksize, damp, ria_alpha
    calib_batch: int = 0  # samples per forward; 0 picks about 16k tokens


@dataclass
class PruneResult:
    steps: list[LayerStep]
    linears: dict[str, dict]  # name -> {shape, zeros fraction}
    seconds: float
    capture_seconds: float

    @property
    def overall_sparsity(self) -> float:
        total = sum(v["numel"] for v in self.linears.values())
        return sum(v["zeros"] for v in self.linears.values()) / max(total, 1)

    def to_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "capture_seconds": round(self.capture_seconds, 3),
            "overall_sparsity": self.overall_sparsity,
            "layers": [asdict(s) for s in self.steps],
            "linears": self.linears,
        }


def _method(name: str) -> Method:
    from compress.prune import METHODS

    if name not in METHODS:
        raise BadInput(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def check_config(model, config: PruneConfig) -> list[tuple[str, nn.Module]]:
    """Validate method, targets and pattern against the model before any work; return the layers."""
    _method(config.method)
    layers = decoder_layers(model)
    chosen = {n: m for name, layer in layers for n, m in target_linears(layer, name, config.targets, config.ignore).items()}
    if not chosen:
        raise BadInput("no Linear layers matched --targets/--ignore inside the decoder layers")
    for name, linear in chosen.items():
        config.pattern.check_fits(linear.in_features, name)
    return layers


def _groups(linears: dict[str, nn.Linear], collectors: dict, method: Method) -> list[list[str]]:
    """Linears that share one input statistic, stacked when the method treats rows independently."""
    if not method.rows_independent or method.collector is None:
        return [[name] for name in linears]
    groups: dict[int, list[str]] = {}
    for name in linears:
        groups.setdefault(id(collectors[name]), []).append(name)
    return list(groups.values())


def _prune_group(names, linears, collectors, method, config) -> None:
    weights = [linears[n].weight.data for n in names]
    stats = collectors[names[0]] if method.collector else None
    stacked = torch.cat(weights, 0) if len(weights) > 1 else weights[0]
    pruned = method.prune(stacked, stats, config.pattern, config.options)
    for name, part in zip(names, pruned.split([w.shape[0] for w in weights], 0)):
        linears[name].weight.data.copy_(part)


@torch.no_grad()
def prune_model(
    model: nn.Module,
    config: PruneConfig,
    calibration: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    on_layer: Callable[[LayerStep, int], None] | None = None,
) -> PruneResult:
    """Prune `model` in place. `calibration` is (nsamples, seqlen) token ids; unused by magnitude."""
    started = time.perf_counter()
    device = torch.device(device)
    method = _method(config.method)
    layers = check_config(model, config)
    inputs, capture_seconds = None, 0.0
    if method.collector is not None:
        if calibration is None:
            raise BadInput(f"method {method.name} needs calibration data")
        per_batch = config.calib_batch or max(1, 16384 // calibration.shape[1])
        batches = list(calibration.split(per_batch, 0))
        inputs = capture_layer_inputs(model, [layer for _, layer in layers], batches, device)
        capture_seconds = time.perf_counter() - started
    linear_report: dict[str, dict] = {}

    def change_layer(index, name, layer, run_calibration) -> dict:
        linears = target_linears(layer, name, config.targets, config.ignore)
        if method.collector is None:
            collectors = {}
        else:
            with collect_inputs(linears, method.collector) as collectors:
                run_calibration()
        for group in _groups(linears, collectors, method):
            _prune_group(group, linears, collectors, method, config)
        per_linear, zeros, numel = {}, 0, 0
        for lname, linear in linears.items():
            z, n = int((linear.weight == 0).sum()), linear.weight.numel()
            linear_report[lname] = {"shape": list(linear.weight.shape), "numel": n, "zeros": z}
            per_linear[lname[len(name) + 1:]] = z / n
            zeros, numel = zeros + z, numel + n
        return {"sparsity": zeros / max(numel, 1), "per_linear": per_linear}

    steps = walk_layers(layers, inputs, device, change_layer,
                        on_done=(lambda step: on_layer(step, len(layers))) if on_layer else None)
    return PruneResult(steps, linear_report, time.perf_counter() - started, capture_seconds)
