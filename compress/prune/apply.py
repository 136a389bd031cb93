"""Prune a loaded model in place, layer by layer: the library entry point behind `compress prune`."""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from compress.calibrate.collectors import collect_inputs
from compress.calibrate.engine import LayerStep, capture_calibration, walk_layers
from compress.errors import BadInput
from compress.model.layers import decoder_layers, target_linears
from compress.model.roles import HeadLayout
from compress.permute import permutation_candidates, site_of, unpermute
from compress.permute.layer_step import GroupStart, global_note, global_options
from compress.prune.checkpoint import LayerCheckpoint
from compress.prune.config import PruneConfig
from compress.prune.permute_pass import check_model_pass, run_model_pass
from compress.prune.method import Method

__all__ = ["PruneConfig", "PruneResult", "prune_model", "check_config"]


@dataclass
class PruneResult:
    steps: list[LayerStep]
    linears: dict[str, dict]  # name -> {shape, zeros fraction}
    seconds: float
    capture_seconds: float
    permutations: dict[str, torch.Tensor] = field(default_factory=dict)  # linear -> input perm
    permutation_sites: dict[str, str] = field(default_factory=dict)  # linear -> mlp | heads | index
    model_pass: dict | None = None  # --permute global's model pass (permute_pass.py)

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
            "permutation_sites": self.permutation_sites,
            **({"permutation_model_pass": self.model_pass} if self.model_pass is not None else {}),
        }


def _method(name: str) -> Method:
    from compress.prune import METHODS

    return METHODS[name]  # PruneConfig checked the name


def check_config(model, config: PruneConfig) -> list[tuple[str, nn.Module]]:
    """Validate method, targets and pattern against the model before any work; return the layers."""
    method = _method(config.method)
    if config.permuting and config.permute in ("learned", "global") and method.collector is None:
        raise BadInput(f"{config.permute} permutations need calibration data, which {method.name} does not use", key="permute")
    layers = decoder_layers(model)
    chosen = {n: m for name, layer in layers for n, m in target_linears(layer, name, config.targets, config.ignore).items()}
    if not chosen:
        raise BadInput("no Linear layers matched targets/ignore inside the decoder layers", key="targets")
    for name, linear in chosen.items():
        config.parsed_pattern.check_fits(linear.in_features, name)
    return layers


def _groups(linears: dict[str, nn.Linear], collectors: dict, method: Method) -> list[list[str]]:
    """Linears that share one input statistic, stacked when the method treats rows independently."""
    if not method.rows_independent or method.collector is None:
        return [[name] for name in linears]
    groups: dict[int, list[str]] = {}
    for name in linears:
        groups.setdefault(id(collectors[name]), []).append(name)
    return list(groups.values())


@dataclass
class _Choice:
    """One way to prune a group of Linears: the permutation and the weights it leads to (original order)."""

    label: str
    perm: torch.Tensor | None
    pruned: torch.Tensor
    info: dict


def _apply(names, linears, choice: _Choice, result: PruneResult, site: str | None) -> None:
    parts = choice.pruned.split([linears[n].weight.shape[0] for n in names], 0)
    for name, part in zip(names, parts):
        linears[name].weight.data.copy_(part)
        if choice.perm is not None:
            result.permutations[name], result.permutation_sites[name] = choice.perm, site


def _pruned_in_order(stacked, stats, perm, method, config: PruneConfig) -> torch.Tensor:
    """`method` run on the columns in `perm` order, the result put back in the original order."""
    permuted_stats = stats.permuted(perm) if stats is not None else None
    return unpermute(method.prune(stacked[:, perm.to(stacked.device)], permuted_stats, config.parsed_pattern,
                                  config.options), perm)


def _stashed_score(score: torch.Tensor, weight_dtype: torch.dtype) -> torch.Tensor:
    """Scores kept for learning: bf16 for a 16-bit model (half the memory; only learning reads them, pruning
    scores anew), else as they are."""
    return score.to(torch.bfloat16) if weight_dtype in (torch.bfloat16, torch.float16) else score


def _prune_group(names, linears, collectors, hessians, method, config: PruneConfig, permute, heads,
                 result: PruneResult, stash: list | None = None) -> list[_Choice]:
    """Prune one group in place with its first choice; return every choice (several for learned permutations).
    With `stash`, what a global permutation search starts from is appended to it."""
    weights = [linears[n].weight.data for n in names]
    stats = collectors[names[0]] if method.collector else None
    stacked = torch.cat(weights, 0) if len(weights) > 1 else weights[0]
    site, pattern = None, config.parsed_pattern
    if config.permuting:
        site = site_of(names[0], stacked.shape[1], heads)
        score = method.score(stacked, stats, config.options)  # stacks only form for row-independent scores
        hessian = hessians[names[0]].matrix() if hessians else None
        choices = [_Choice(label, perm, _pruned_in_order(stacked, stats, perm, method, config), info)
                   for label, perm, info in permutation_candidates(permute, pattern, stacked.float(), score,
                                                                   hessian, site, heads)]
        if stash is not None:
            stash.append(GroupStart(names, stacked.clone(), _stashed_score(score, stacked.dtype), site, stats,
                                    choices[0]))  # stacked may alias
    else:
        choices = [_Choice("none", None, method.prune(stacked, stats, pattern, config.options), {})]
    _apply(names, linears, choices[0], result, site)
    return choices


def _keep_by_layer_error(options: dict[str, tuple], linears, data, result: PruneResult) -> dict:
    """Per group, in order, switch to each later choice and keep it only if the decoder layer's output error
    on the calibration reference falls (one pass of coordinate descent from the first choices). The error
    is per token: the plain one is dominated by a few massive-activation tokens, and choosing by it made
    perplexity worse (BENCHMARKS.md)."""
    best = start = data.output_error()
    kept = {}
    for key, (names, choices, site) in options.items():
        kept[key] = 0
        for index in range(1, len(choices)):
            _apply(names, linears, choices[index], result, site)
            error = data.output_error()
            if error < best:
                best, kept[key] = error, index
        _apply(names, linears, choices[kept[key]], result, site)
    report = {key: {**options[key][1][-1].info, "kept": options[key][1][kept[key]].label} for key in options}
    return {"groups": report, "layer_error_heuristic": start, "layer_error": best}


def _learning_start(start: GroupStart, perm: torch.Tensor, method: Method, config: PruneConfig) -> GroupStart:
    """`start` with the weights the model pass learns on (the method's learn_weights of its pruned result in
    `perm` order) and their scores, all in the original column order."""
    perm = perm.to(start.stacked.device)
    same = start.choice.perm is not None and torch.equal(start.choice.perm.to(perm.device), perm)
    pruned = start.choice.pruned if same else _pruned_in_order(start.stacked, start.stats, perm, method, config)
    stats = start.stats.permuted(perm) if start.stats is not None else None
    weights = unpermute(method.learn_weights(start.stacked[:, perm], pruned[:, perm].to(start.stacked.device), stats,
                                             config.options), perm)
    return replace(start, stacked=weights, score=_stashed_score(method.score(weights, start.stats, config.options),
                                                                weights.dtype))


@torch.no_grad()
def method_inputs(method, model, layers, calibration, batch: int, device, started: float):
    """(first-layer inputs, seconds since `started`) of the calibration windows when `method` collects
    statistics, else (None, 0.0); a method that needs calibration without it is refused."""
    if method.collector is None:
        return None, 0.0
    if calibration is None:
        raise BadInput(f"method {method.name} needs calibration data", key="calibrate")
    inputs = capture_calibration(model, layers, calibration, batch, device)
    return inputs, time.perf_counter() - started


def prune_model(
    model: nn.Module,
    config: PruneConfig,
    calibration: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    on_layer: Callable[[LayerStep, int], None] | None = None,
    checkpoint: LayerCheckpoint | None = None,
    on_note: Callable[[str], None] | None = None,
    after_layers: Callable[[PruneResult], None] | None = None,
) -> PruneResult:
    """Prune `model` in place. `calibration` is (nsamples, seqlen) token ids; unused by magnitude.
    With a `checkpoint`, each finished layer is saved there, and the layers an earlier run saved are
    restored instead of pruned again. `on_note`
    receives the model pass's progress lines; `after_layers` is called between the layer-sequential pass and the
    model pass (a benchmark measures the heuristic start there)."""
    started = time.perf_counter()
    device = torch.device(device)
    method = _method(config.method)
    layers = check_config(model, config)
    linear_report: dict[str, dict] = {}
    result = PruneResult([], linear_report, 0.0, 0.0)
    done = checkpoint.resume(layers, result) if checkpoint is not None else 0
    model_pass = config.permuting and config.permute == "global" and config.perm_model_steps > 0
    group_starts = []  # every group's dense weights, score and first choice: what the model pass learns from
    if model_pass:
        check_model_pass(model)
        if done:
            raise BadInput("--resume cannot continue a --permute global run: its model pass needs every layer's "
                           "dense weights; run it again without --resume", key="resume")
    inputs, result.capture_seconds = (None, 0.0) if done == len(layers) else method_inputs(
        method, model, layers, calibration, config.calib_batch, device, started)
    if done and inputs is not None:
        checkpoint.replay(layers, inputs, device, done)
    heads = HeadLayout.of(model.config)
    learn_needs_hessian = config.permuting and config.permute == "learned" and method.collector != "hessian"
    permute = config.permute_config()

    def change_layer(index, name, layer, data) -> dict:
        linears = target_linears(layer, name, config.targets, config.ignore)
        collectors, hessians = {}, {}
        if method.collector is not None:
            with collect_inputs(linears, method.collector) as collectors:
                if learn_needs_hessian:
                    with collect_inputs(linears, "hessian") as hessians:
                        data()
                else:
                    data()
            if method.collector == "hessian":
                hessians = collectors
        learns = config.permute == "global" and (config.perm_iters > 0 or model_pass)
        options, stash = {}, ([] if learns else None)
        for group in _groups(linears, collectors, method):
            choices = _prune_group(group, linears, collectors, hessians, method, config, permute, heads, result,
                                   stash)
            if len(choices) > 1:
                site = result.permutation_sites[group[0]]
                options[group[0][len(name) + 1:]] = (group, choices, site)
        training = None
        if model_pass:
            group_starts.extend(stash)
        if stash and config.perm_iters > 0:
            found, training = global_options(name, layer, stash, data, permute.global_, config.parsed_pattern,
                                             heads, lambda g, perm: _pruned_in_order(g.stacked, g.stats, perm,
                                                                                       method, config))
            options = {start.names[0][len(name) + 1:]: (start.names, [start.choice, _Choice("global", perm, pruned, info)],
                                                       start.site) for start, perm, pruned, info in found}
        learned = _keep_by_layer_error(options, linears, data, result) if options else None
        per_linear, zeros, numel = {}, 0, 0
        for lname, linear in linears.items():
            z, n = int((linear.weight == 0).sum()), linear.weight.numel()
            linear_report[lname] = {"shape": list(linear.weight.shape), "numel": n, "zeros": z}
            per_linear[lname[len(name) + 1:]] = z / n
            zeros, numel = zeros + z, numel + n
        report = {"sparsity": zeros / max(numel, 1), "per_linear": per_linear}
        if learned and training is not None:
            report["global_permutation"] = {**learned, "training": training}
            report["note"] = global_note(report["global_permutation"])
        elif learned:
            report["learned_permutation"] = learned
        return report

    def finished(step: LayerStep) -> None:
        if checkpoint is not None:
            checkpoint.save(step, layers[step.index][1], result)
        if on_layer:
            on_layer(step, len(layers))

    with checkpoint or nullcontext():
        result.steps += walk_layers(layers, inputs, device, change_layer, on_done=finished, first=done)
    if after_layers is not None:
        after_layers(result)
    if model_pass:
        linears = dict(model.named_modules())
        result.model_pass = run_model_pass(
            model, group_starts, result, config, calibration, device,
            prune_in_order=lambda start, perm: _pruned_in_order(start.stacked, start.stats, perm, method, config),
            apply=lambda start, perm, weight: _apply(start.names, linears, _Choice("global", perm, weight, {}), result,
                                                     result.permutation_sites[start.names[0]]),
            on_note=on_note,
            learn_on=(lambda start, perm: _learning_start(start, perm, method, config)) if method.learn_weights else None)
    result.seconds = time.perf_counter() - started
    return result
