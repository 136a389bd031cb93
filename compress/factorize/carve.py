"""Training-free carving of a dense gated FFN into shared and routed neuron groups (after CMoE, arXiv 2502.04416).

Activity: on calibration tokens each neuron's score is act(x̂·ĝ_j)·(x̂·û_j) with the token x and the neuron's
gate/up rows scaled to unit length; neuron j is *marked* on token t when |score| is among the token's
`activity_top` largest. Its activation rate is the share of tokens that mark it.
Shared group: the `shared_neurons` neurons with the highest rates; they run for every token.
Routed groups: the rest, clustered by co-activation into `experts` groups of equal size m. The first
centroids are the marker columns of the E highest-rate remaining neurons; every neuron goes to a centroid
by Hamming distance between marker columns, under a balanced assignment (each centroid takes exactly m
neurons: a linear assignment over the centroids repeated m times, greedy beyond ASSIGN_EXACT neurons);
centroids then move to their groups' mean marker column. An expert's *representative* is the member
closest (L1) to its group's final centroid, which the analytic router (analytic.py) reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Carving", "carve", "neuron_markers", "balanced_assignment"]

ASSIGN_EXACT = 4096  # routed neurons up to which the balanced assignment is solved exactly


@dataclass
class Carving:
    shared: torch.Tensor  # (s,) neuron ids that always run, sorted
    groups: torch.Tensor  # (experts, m) neuron ids of each routed expert, rows sorted
    representatives: torch.Tensor  # (experts,) one neuron id per routed expert
    rates: torch.Tensor  # (intermediate,) activation rate of every neuron on the calibration tokens


@torch.no_grad()
def neuron_markers(inputs: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act_fn, top: int) -> torch.Tensor:
    """(tokens, neurons) bool: the `top` neurons of each token by |act(x̂·ĝ)·(x̂·û)| (unit-length x and rows)."""
    x = F.normalize(inputs.float(), dim=-1)
    score = act_fn(x @ F.normalize(gate.float(), dim=1).T) * (x @ F.normalize(up.float(), dim=1).T)
    picked = score.abs().topk(min(top, score.shape[1]), dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, picked, True)


def balanced_assignment(cost: torch.Tensor, size: int) -> torch.Tensor:
    """(n,) cluster of each point minimising the total cost (n, clusters) with exactly `size` points per
    cluster; exact (linear assignment) up to ASSIGN_EXACT points, greedy cheapest-pair-first beyond."""
    n, clusters = cost.shape
    if n <= ASSIGN_EXACT:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost.double().repeat_interleave(size, dim=1).numpy())
        assign = torch.empty(n, dtype=torch.long)
        assign[torch.from_numpy(rows)] = torch.from_numpy(cols // size).long()
        return assign
    order = torch.argsort(cost.flatten(), stable=True).tolist()
    assign, room, left = [-1] * n, [size] * clusters, n
    for flat in order:
        point, cluster = divmod(flat, clusters)
        if assign[point] < 0 and room[cluster]:
            assign[point], room[cluster], left = cluster, room[cluster] - 1, left - 1
            if not left:
                break
    return torch.tensor(assign)


@torch.no_grad()
def carve(markers: torch.Tensor, shared_neurons: int, experts: int, iterations: int = 1) -> Carving:
    """Shared neurons, balanced co-activation groups and representatives from (tokens, neurons) markers."""
    tokens, intermediate = markers.shape
    rates = markers.float().mean(0)
    order = torch.argsort(rates, descending=True, stable=True)
    shared, rest = order[:shared_neurons].sort().values, order[shared_neurons:]
    size = rest.numel() // experts
    columns = markers[:, rest].T.float()  # (routed neurons, tokens)
    centroids = columns[:experts].clone()  # `rest` is in decreasing rate: the E most active seed the clusters
    for _ in range(iterations):
        assign = balanced_assignment(torch.cdist(columns, centroids, p=1), size)
        centroids = torch.stack([columns[assign == e].mean(0) for e in range(experts)])
    groups, representatives = [], []
    for e in range(experts):
        members = torch.nonzero(assign == e).flatten()
        closest = torch.cdist(centroids[e:e + 1], columns[members], p=1).argmin()
        representatives.append(rest[members[closest]])
        groups.append(rest[members].sort().values)
    return Carving(shared, torch.stack(groups), torch.stack(representatives), rates)
