"""GTSP's four dimensions, post-training: attention layers, heads, tokens (nodes entering attention) and
weights, each a fraction removed (0 leaves it alone), by importance or at random (the baseline).

Order: layers, then heads, then tokens, then weights; each step scores the model as pruned so far on the
calibration graphs. Last, the BatchNorm statistics are re-estimated on the calibration graphs (pruning
shifts what flows into them; on B3DB this recovered most of the ROC-AUC lost before any fine-tune).
- layers: the global attention of the round(f · layers) layers whose removal raises the calibration loss
  least is removed (their local message passing and MLP stay).
- heads: importance Σ |A ⊙ ∂L/∂A| over calibration graphs; round(f · heads) heads of every layer are cut
  out of the q/k/v rows and the output projection's columns (structurally: smaller Linears).
- tokens: each graph keeps ceil((1 - f) · nodes) nodes in every attention, ranked by the attention they
  receive weighted by the loss's sensitivity to it (Σ over heads and queries of |A ⊙ ∂L/∂A| in the node's
  column; the plain attention received ranked no better than random on MUTAG). The ranking has to be
  known before attention runs, so a linear scorer per layer is fitted by ridge regression on the
  calibration graphs to predict its logarithm from the layer's input. Random: scorers with random weights.
- weights: a method of compress.prune (magnitude, wanda, ria, sparsegpt) on every Linear of the GPS
  layers, unstructured (the fraction) or N:M; zeros stay in place.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compress.config import check_seed
from compress.errors import BadInput

__all__ = ["GraphPruneSpec", "prune_graph_model", "recalibrate_norms", "weight_targets", "head_importance", "layer_importance"]

WEIGHT_METHODS = ("magnitude", "wanda", "ria", "sparsegpt")


@dataclass(frozen=True)
class GraphPruneSpec:
    tokens: float = 0.0
    heads: float = 0.0
    layers: float = 0.0
    weights: float = 0.0
    weight_method: str = "magnitude"
    weight_pattern: str | None = None  # N:M instead of the unstructured `weights` fraction
    random: bool = False
    seed: int = 0
    recalibrate: bool = True  # re-estimate the BatchNorm statistics after pruning

    def __post_init__(self):
        for name in ("tokens", "heads", "layers", "weights"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise BadInput(f"the fraction of {name} removed must be in [0, 1), got {value}", key=name)
        if self.weight_method not in WEIGHT_METHODS:
            raise BadInput(f"weight method must be one of {', '.join(WEIGHT_METHODS)}, got {self.weight_method!r}",
                           key="weight_method")
        check_seed(self.seed, "seed")
        if self.weight_pattern is not None and self.weights:
            raise BadInput("give --weights (unstructured) or --weight-pattern (N:M), not both", key="weight_pattern")

    @property
    def pattern(self):
        from compress.pattern import parse_pattern

        if self.weight_pattern is not None:
            return parse_pattern(self.weight_pattern)
        return parse_pattern(sparsity=self.weights) if self.weights else None


def _loss(model, calibration: list) -> float:
    with torch.no_grad():
        model.eval()
        total = sum(F.cross_entropy(model(b), b.y.view(-1), reduction="sum").item() for b in calibration)
    return total / sum(b.num_graphs for b in calibration)


def _chosen(scores: list[float], k: int, random: bool, generator: torch.Generator) -> list[int]:
    """k indices: the lowest scores (ties: the lower index), or k at random."""
    if random:
        return sorted(torch.randperm(len(scores), generator=generator)[:k].tolist())
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k])


# ---------------------------------------------------------------- layers


def layer_importance(model, calibration: list) -> dict[int, float]:
    """Calibration loss increase when each layer's attention alone is removed."""
    base, rise = _loss(model, calibration), {}
    for i, layer in enumerate(model.layers):
        if layer.attn is not None:
            attn, layer.attn = layer.attn, None
            rise[i] = _loss(model, calibration) - base
            layer.attn = attn
    return rise


def _prune_layers(model, fraction: float, calibration, random: bool, generator) -> list[int]:
    k = round(fraction * len(model.layers))
    rise = layer_importance(model, calibration) if not random else {
        i: 0.0 for i, l in enumerate(model.layers) if l.attn is not None}
    candidates = sorted(rise)
    removed = [candidates[i] for i in _chosen([rise[c] for c in candidates], min(k, len(candidates)), random, generator)]
    heads = list(model.config.heads)
    for i in removed:
        model.layers[i].attn = None
        heads[i] = 0
    model.config.heads = heads
    return removed


# ---------------------------------------------------------------- heads


def head_importance(model, calibration: list) -> dict[int, torch.Tensor]:
    """Per layer with attention: Σ over calibration graphs of |A ⊙ ∂L/∂A| for each head."""
    attns = {i: l.attn for i, l in enumerate(model.layers) if l.attn is not None}
    scores = {i: torch.zeros(a.heads) for i, a in attns.items()}
    model.eval()
    try:
        for a in attns.values():
            a.record = True
        for batch in calibration:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                F.cross_entropy(model(batch), batch.y.view(-1), reduction="sum").backward()
            for i, a in attns.items():
                for attention, _ in a.maps:
                    scores[i] += (attention * attention.grad).abs().sum((0, 2, 3)).detach().cpu()
                a.maps.clear()
    finally:
        for a in attns.values():
            a.record = False
            a.maps.clear()
        model.zero_grad(set_to_none=True)
    return scores


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None).to(weight.device, weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach()[rows] if rows is not None else linear.bias.detach())
    return out


def keep_heads(attn, kept: list[int]) -> None:
    """Shrink an Attention to the heads `kept` (q/k/v rows and output-projection columns)."""
    d = attn.head_dim
    index = torch.tensor([h * d + j for h in kept for j in range(d)], dtype=torch.long)
    attn.q, attn.k, attn.v = (_slice_linear(p, rows=index) for p in (attn.q, attn.k, attn.v))
    attn.o = _slice_linear(attn.o, cols=index)
    attn.heads = len(kept)


def _prune_heads(model, fraction: float, calibration, random: bool, generator) -> dict[int, list[int]]:
    scores = head_importance(model, calibration) if not random else {
        i: torch.zeros(l.attn.heads) for i, l in enumerate(model.layers) if l.attn is not None}
    removed, heads = {}, list(model.config.heads)
    for i, score in scores.items():
        layer = model.layers[i]
        drop = _chosen(score.tolist(), round(fraction * layer.attn.heads), random, generator)
        removed[i] = drop
        kept = [h for h in range(layer.attn.heads) if h not in drop]
        if kept:
            keep_heads(layer.attn, kept)
        else:
            layer.attn = None
        heads[i] = len(kept)
    model.config.heads = heads
    return removed


# ---------------------------------------------------------------- tokens


def _token_importance(model, index: int, calibration: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer inputs, log importance of each node as a key): Σ over heads and queries of |A ⊙ ∂L/∂A| in
    the node's column, i.e. the attention it receives weighted by the loss's sensitivity to it."""
    inputs, targets = [], []
    layer = model.layers[index]
    attn = layer.attn
    hook = layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    attn.record = True
    try:
        for batch in calibration:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                F.cross_entropy(model(batch), batch.y.view(-1), reduction="sum").backward()
            attention, mask = attn.maps.pop()
            targets.append(torch.log((attention * attention.grad).abs().sum((1, 2))[mask] + 1e-6).detach())
    finally:
        hook.remove()
        attn.record = False
        attn.maps.clear()
        model.zero_grad(set_to_none=True)
    return torch.cat(inputs).float(), torch.cat(targets).float()


def _fit_scorer(scorer: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> None:
    design = torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1).double()
    gram = design.T @ design
    ridge = 1e-3 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + ridge, design.T @ y.double().unsqueeze(1)).view(-1)
    with torch.no_grad():
        scorer.weight.copy_(solution[:-1].view(1, -1))
        scorer.bias.copy_(solution[-1:])


def _prune_tokens(model, fraction: float, calibration, random: bool, generator) -> None:
    c = model.config.channels
    device = next(model.parameters()).device
    model.scorers = nn.ModuleList(nn.Linear(c, 1) for _ in model.layers).to(device)
    with torch.no_grad():  # a layer without attention never uses its scorer: zeros, not the global RNG's draw
        for scorer in model.scorers:
            scorer.weight.zero_()
            scorer.bias.zero_()
    model.config.token_keep = 1.0 - fraction
    if random:
        with torch.no_grad():
            for scorer in model.scorers:
                scorer.weight.copy_(torch.randn(1, c, generator=generator))
                scorer.bias.zero_()
        return
    try:
        for i, layer in enumerate(model.layers):
            model.fitting_from = i  # layers before i already keep only their chosen nodes
            if layer.attn is not None:
                _fit_scorer(model.scorers[i], *_token_importance(model, i, calibration))
    finally:
        model.fitting_from = None


# ---------------------------------------------------------------- weights


def weight_targets(model) -> dict[str, nn.Linear]:
    return {f"layers.{name}": m for name, m in model.layers.named_modules() if isinstance(m, nn.Linear)}


def _prune_weights(model, spec: GraphPruneSpec, calibration, generator) -> dict[nn.Linear, torch.Tensor]:
    from compress.calibrate.collectors import collect_inputs
    from compress.pattern import mask_for
    from compress.prune import METHODS

    pattern, targets = spec.pattern, weight_targets(model)
    for name, linear in targets.items():
        pattern.check_fits(linear.in_features, name)
    method = METHODS[spec.weight_method]
    stats: dict = {}
    if method.collector is not None and not spec.random:
        with collect_inputs(targets, method.collector) as stats, torch.no_grad():
            for batch in calibration:
                model(batch)
    masks = {}
    with torch.no_grad():
        for name, linear in targets.items():
            weight = linear.weight
            if spec.random:
                mask = mask_for(torch.rand(weight.shape, generator=generator).to(weight.device), pattern)
                linear.weight.mul_(mask)
            else:
                linear.weight.copy_(method.prune(weight.detach().float(), stats.get(name), pattern, {}).to(weight.dtype))
                mask = linear.weight != 0
            masks[linear] = mask
    return masks


def recalibrate_norms(model, calibration: list) -> None:
    """Re-estimate every BatchNorm's running statistics on the calibration graphs (no gradients): pruning
    changes what flows into them, and stale statistics cost more ROC-AUC than the pruning itself."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [n.momentum for n in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batches
    model.train()
    try:
        with torch.no_grad():
            for batch in calibration:
                model(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()


def prune_graph_model(model, spec: GraphPruneSpec, calibration: list):
    """A pruned copy of `model` (the original is untouched), its weight masks and a report."""
    model = copy.deepcopy(model).eval()
    model.config = model.config.model_copy(deep=True)
    generator = torch.Generator().manual_seed(spec.seed)
    report: dict = {"calibration_loss_before": _loss(model, calibration)}
    if spec.layers:
        report["layers_removed"] = _prune_layers(model, spec.layers, calibration, spec.random, generator)
    if spec.heads:
        report["heads_removed"] = {str(k): v for k, v in
                                   _prune_heads(model, spec.heads, calibration, spec.random, generator).items()}
    if spec.tokens:
        _prune_tokens(model, spec.tokens, calibration, spec.random, generator)
    masks = _prune_weights(model, spec, calibration, generator) if spec.pattern is not None else {}
    if spec.recalibrate and (spec.tokens or spec.heads or spec.layers or spec.pattern is not None):
        recalibrate_norms(model, calibration)
    report.update(heads=list(model.config.heads), token_keep=model.config.token_keep,
                  weight_pattern=str(spec.pattern) if spec.pattern else None,
                  calibration_loss_after=_loss(model, calibration))
    return model.eval(), masks, report
