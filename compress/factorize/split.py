"""Which intermediate neurons go to which expert: `groups` (experts, m), each row a sorted set of neurons.

  contiguous    neurons [e·m, (e+1)·m) (FactorLLM's released split)
  random        a seeded random permutation, cut into equal parts
  cluster       balanced k-means over each neuron's gate and up weight rows (MoEfication's parameter split)
  coactivation  balanced k-means over each neuron's activity pattern on calibration tokens: neuron j is
                *active* on token t when |act(gate)·up|[t, j] is among the top q of that token's neurons
                (q = COACTIVE_Q); neurons active on the same tokens land in the same expert
Balanced k-means assigns greedily (closest point–centroid pairs first, each centroid taking m points), so
every expert gets exactly m neurons.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SPLITS", "COACTIVE_Q", "split_neurons", "balanced_kmeans", "activity_pattern"]

SPLITS = ("contiguous", "random", "cluster", "coactivation")
COACTIVE_Q = 0.1  # a neuron is active on a token when it is in that token's top 10% by |act(gate)·up|


def balanced_kmeans(points: torch.Tensor, clusters: int, seed: int, iterations: int = 20) -> torch.Tensor:
    """(clusters, n / clusters) point indices, equal-sized clusters by cosine similarity."""
    n = points.shape[0]
    size = n // clusters
    x = F.normalize(points.float(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=generator)[:clusters]]
    assign = None
    for _ in range(iterations):
        similarity = x @ centroids.T  # (n, clusters)
        order = torch.argsort(similarity.flatten(), descending=True, stable=True)
        new = [-1] * n  # plain lists: this loop runs n·clusters times per iteration
        room = [size] * clusters
        left = n
        for flat in order.tolist():
            point, cluster = divmod(flat, clusters)
            if new[point] >= 0 or room[cluster] == 0:
                continue
            new[point] = cluster
            room[cluster] -= 1
            left -= 1
            if left == 0:
                break
        new = torch.tensor(new)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        centroids = F.normalize(torch.stack([x[assign == c].mean(0) for c in range(clusters)]), dim=1)
    return torch.stack([torch.nonzero(assign == c).flatten() for c in range(clusters)])


@torch.no_grad()
def activity_pattern(inputs: torch.Tensor, gate, up, act_fn, q: float = COACTIVE_Q) -> torch.Tensor:
    """(neurons, tokens) 0/1: neuron j is active on token t (|act(gate)·up| in the token's top q)."""
    h = (act_fn(F.linear(inputs, gate.weight)) * F.linear(inputs, up.weight)).abs()
    keep = max(1, round(q * h.shape[1]))
    threshold = h.topk(keep, dim=1).values[:, -1:]
    return (h >= threshold).T.float()


def split_neurons(kind: str, intermediate: int, experts: int, seed: int = 0, gate=None, up=None,
                  activity: torch.Tensor | None = None) -> torch.Tensor:
    """The neurons of each expert, (experts, intermediate / experts), rows sorted."""
    size = intermediate // experts
    if kind == "contiguous":
        groups = torch.arange(intermediate).reshape(experts, size)
    elif kind == "random":
        groups = torch.randperm(intermediate, generator=torch.Generator().manual_seed(seed)).reshape(experts, size)
    elif kind == "cluster":
        groups = balanced_kmeans(torch.cat([gate.weight, up.weight], dim=1).detach().cpu(), experts, seed)
    elif kind == "coactivation":
        groups = balanced_kmeans(activity.cpu(), experts, seed)
    else:
        raise ValueError(f"unknown split {kind!r}")
    return groups.sort(dim=1).values
