"""A position prior (beyond the paper): the logit a query head gives a key at each distance, on average over
the calibration windows, added to every label score before the tokens are chosen.

A few heavy channels (or a rank-r projection) see content, not position: RoPE spreads a head's preference for
recent tokens over many channels, the fast-rotating ones included, so labels miss the local tokens small
models attend to most. The prior puts that preference back as one number per distance bucket, a smooth form of
a sink + recent window that keeps the whole budget open to content.

Buckets of the distance δ = query position − key position: δ itself for δ < EXACT, then one per power of two
(EXACT + floor(log2 δ) − log2 EXACT), capped at BUCKETS − 2; the key at position 0 (the window's first token,
an attention sink in most models) has bucket SINK = BUCKETS − 1 whatever its distance. A bucket's value is the
mean over calibration (query, key) pairs of the query heads' logit q·k (unscaled, the units of label scores),
centred per query over its causal keys (only differences between keys change a query's choice), averaged over
the heads sharing a KV head. Buckets no window reached take the value of the nearest closer one.
"""
from __future__ import annotations

import torch

__all__ = ["BUCKETS", "EXACT", "SINK", "distance_buckets", "PriorSums", "prior_scores"]

BUCKETS = 64
EXACT = 16
SINK = BUCKETS - 1
QUERIES_PER_WINDOW = 256  # queries sampled per window (evenly): bounds the (heads, queries, keys) logits


def distance_buckets(positions: torch.Tensor, keys: int) -> torch.Tensor:
    """(queries, keys) bucket of each (query at `positions`, key 0..keys-1); causal pairs only are meaningful."""
    j = torch.arange(keys, device=positions.device)
    delta = (positions[:, None] - j[None, :]).clamp_min(0)
    shift = EXACT.bit_length() - 1
    # floor(log2 δ) from the float's exponent: exact (a CUDA log2 put δ = 64 one bucket low)
    far = EXACT + torch.frexp(delta.clamp_min(EXACT).double()).exponent.long() - 1 - shift
    bucket = torch.where(delta < EXACT, delta, far).clamp_max(BUCKETS - 2)
    return torch.where(j[None, :] == 0, torch.full_like(bucket, SINK), bucket)


class PriorSums:
    """One layer's sums of the centred, group-averaged logits per KV head and bucket, and the pair counts."""

    def __init__(self) -> None:
        self.sums = None
        self.counts = torch.zeros(BUCKETS, dtype=torch.float64)

    def update(self, query: torch.Tensor, key: torch.Tensor) -> None:
        """query (b, heads, n, d), key (b, kv_heads, n, d), after RoPE; positions 0..n-1."""
        b, h, n, _ = query.shape
        kv = key.shape[1]
        positions = torch.arange(n, device=query.device)[:: max(1, n // QUERIES_PER_WINDOW)]
        kv_of_head = torch.arange(h, device=query.device) // (h // kv)
        logits = query[:, :, positions].float() @ key[:, kv_of_head].float().transpose(-1, -2)
        logits = logits.view(b, kv, h // kv, len(positions), n).mean(2).double()
        allowed = torch.arange(n, device=query.device)[None, :] <= positions[:, None]
        centred = logits - (logits * allowed).sum(-1, keepdim=True) / allowed.sum(-1, keepdim=True)
        bucket = distance_buckets(positions, n)[allowed]
        sums = torch.zeros(b, kv, BUCKETS, dtype=torch.float64, device=query.device)
        sums.index_add_(2, bucket, centred[..., allowed])
        sums = sums.sum(0).cpu()
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts += torch.bincount(bucket, minlength=BUCKETS).double().cpu() * b

    def fit(self) -> torch.Tensor:
        """(kv_heads, BUCKETS) float32 prior: the mean per bucket, unreached buckets from the nearest closer one."""
        prior = self.sums / self.counts.clamp_min(1)
        for i in range(1, SINK):
            if self.counts[i] == 0:
                prior[:, i] = prior[:, i - 1]
        return prior.float()


def prior_scores(prior: torch.Tensor, kv_of_head: torch.Tensor, queries: int, keys: int) -> torch.Tensor:
    """(1, heads, queries, keys): each head's prior for the last `queries` positions of `keys`; prior (kv, BUCKETS)."""
    positions = torch.arange(keys - queries, keys, device=prior.device)
    return prior[kv_of_head.to(prior.device)][:, distance_buckets(positions, keys)][None]
