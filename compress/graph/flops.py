"""FLOPs two ways, never mixed, and wall time.

structural: what runs, counted by torch.utils.flop_counter.FlopCounterMode over a forward pass. It counts
  matrix products (every Linear, the attention score and value products); it does not count elementwise
  work, softmax, normalisation, embedding lookups, or PyG's gather/scatter message passing (GINE's
  relu(x_j + e_ij) and the neighbour sum, about 3 · edges · channels per layer): those are reported
  apart as `message_passing_flops` (our count, from the edge count), not added in.
nonzero: the structural count with each pruned Linear's products scaled by its share of nonzero weights
  (what a sparse kernel could skip; unstructured and N:M zeros do not shrink any tensor that runs).
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["count_flops", "wall_time"]


def count_flops(model, batch_list: list) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for batch in batch_list:
            model(batch)
    per_module = counter.get_flop_counts()
    structural = int(counter.get_total_flops())
    root = type(model).__name__
    skipped = 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            flops = sum(per_module.get(f"{root}.{name}", {}).values())
            skipped += flops * float((module.weight == 0).float().mean())
    attention_layers = sum(layer.attn is not None for layer in model.layers)
    edges = sum(int(b.edge_index.shape[1]) for b in batch_list)
    return {"structural_flops": structural, "nonzero_flops": int(round(structural - skipped)),
            "message_passing_flops": 3 * edges * model.config.channels * len(model.layers),
            "attention_layers": attention_layers}


def wall_time(model, batch_list: list, repeats: int = 5) -> float:
    """Median seconds of one inference pass over `batch_list` (after one warm-up pass)."""
    model.eval()
    times = []
    with torch.no_grad():
        for step in range(repeats + 1):
            started = time.perf_counter()
            for batch in batch_list:
                model(batch)
            if step:
                times.append(time.perf_counter() - started)
    return statistics.median(times)
