"""The tensor math of Double Sparsity, apart from any model: label scores over heavy channels, the token
set each query keeps, and exact softmax attention over that set.

Shapes: query (batch, heads, queries, head_dim), key/value (batch, kv_heads, keys, head_dim), after RoPE;
queries are the last `queries` positions of the `keys` (a causal prefill or one decode step).
Under GQA one token set per KV head: label scores are summed over the query heads that share it.
Labels: each key's heavy channels, quantised per key and head to `bits` (asymmetric min/max, round to
nearest); 16 keeps them in float16.
Projected labels (compress.attention.calibration.projection): `project_labels` maps queries by A and keys by B; the
label scores over those are `label_scores(q A, k B, heavy=arange(r))`, as the decode kernels score a label
cache built from k B with pre-projected queries (compress.attention.decoding.generate).
"""
from __future__ import annotations

import torch

__all__ = ["label_codes", "quantize_labels", "label_scores", "project_labels", "projected_scores", "allowed_keys", "select_fixed", "select_top_p",
           "masked_attention"]


def label_codes(labels: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, low, step): each label vector (last dim) as integer codes in [0, 2^bits) of `step` above its min."""
    levels = 2 ** bits - 1
    low = labels.amin(-1, keepdim=True)
    step = (labels.amax(-1, keepdim=True) - low).clamp_min(1e-8) / levels
    return ((labels - low) / step).round().clamp(0, levels), low, step


def quantize_labels(labels: torch.Tensor, bits: int) -> torch.Tensor:
    """Round each label vector (last dim) to 2^bits levels between its min and max; 16: to float16."""
    if bits >= 16:
        return labels.to(torch.float16).to(labels.dtype)
    codes, low, step = label_codes(labels, bits)
    return codes * step + low


def _gather_channels(states: torch.Tensor, heavy: torch.Tensor) -> torch.Tensor:
    """states (b, heads, n, d), heavy (heads, r) -> (b, heads, n, r)."""
    b, h, n, _ = states.shape
    return torch.gather(states, -1, heavy.to(states.device)[None, :, None, :].expand(b, h, n, heavy.shape[-1]))


def label_scores(query: torch.Tensor, key: torch.Tensor, heavy: torch.Tensor | None, bits: int,
                 kv_of_head: torch.Tensor) -> torch.Tensor:
    """Approximate logits per query head, (b, heads, queries, keys): q·k over each head's heavy channels
    (`heavy` (heads, r)), keys quantised to `bits`. heavy=None: the exact logits (the oracle)."""
    key = key[:, kv_of_head.to(key.device)].float()
    query = query.float()
    if heavy is None:
        return query @ key.transpose(-1, -2)
    return _gather_channels(query, heavy) @ quantize_labels(_gather_channels(key, heavy), bits).transpose(-1, -2)


def project_labels(query: torch.Tensor, key: torch.Tensor, query_map: torch.Tensor, key_map: torch.Tensor,
                   kv_of_head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q A (b, heads, queries, r), k B (b, kv_heads, keys, r)): query_map/key_map (kv_heads, head_dim, r);
    each query head uses its KV head's A. k B is what a label cache stores (before quantisation)."""
    a = query_map.to(query.device)[kv_of_head.to(query.device)]
    return query.float() @ a[None], key.float() @ key_map.to(key.device)[None]


def projected_scores(query: torch.Tensor, key: torch.Tensor, query_map: torch.Tensor, key_map: torch.Tensor,
                     bits: int, kv_of_head: torch.Tensor) -> torch.Tensor:
    """Approximate logits from projected labels, (b, heads, queries, keys): the channel scoring of
    `label_scores` over the projected query and key labels, every one of their r dims heavy."""
    projected_query, projected_key = project_labels(query, key, query_map, key_map, kv_of_head)
    heavy = torch.arange(query_map.shape[-1]).expand(query.shape[1], -1)
    return label_scores(projected_query, projected_key, heavy, bits, kv_of_head)


def allowed_keys(queries: int, keys: int, mask: torch.Tensor | None, device) -> torch.Tensor:
    """(b or 1, 1, queries, keys) bool: causal (queries are the last positions), and what `mask` allows
    (bool: True = attend; float: 0 = attend)."""
    position = torch.arange(keys - queries, keys, device=device)
    allowed = (torch.arange(keys, device=device)[None, :] <= position[:, None])[None, None]
    if mask is not None:
        mask = mask[..., -queries:, :keys]
        allowed = allowed & (mask if mask.dtype == torch.bool else mask == 0)
    return allowed


def _forced(allowed: torch.Tensor, sink: int, recent: int) -> torch.Tensor:
    queries, keys = allowed.shape[-2:]
    j = torch.arange(keys, device=allowed.device)
    position = torch.arange(keys - queries, keys, device=allowed.device)[:, None]
    return allowed & ((j < sink) | (j > position - recent))


def _group_sum(scores: torch.Tensor, kv_heads: int) -> torch.Tensor:
    b, h, q, k = scores.shape
    return scores.view(b, kv_heads, h // kv_heads, q, k).sum(2)


def select_fixed(scores: torch.Tensor, allowed: torch.Tensor, budget: int, kv_heads: int, sink: int = 0,
                 recent: int = 0) -> torch.Tensor:
    """(b, kv_heads, queries, keys) bool: per query and KV head the `budget` allowed keys of highest
    group-summed score, sink and recent keys first; a query with ≤ budget allowed keys keeps them all."""
    grouped = _group_sum(scores, kv_heads)
    allowed = allowed.expand_as(grouped)
    ranked = grouped.masked_fill(~allowed, float("-inf")).masked_fill(_forced(allowed, sink, recent), float("inf"))
    top = ranked.topk(min(budget, ranked.shape[-1]), dim=-1).indices
    keep = torch.zeros_like(allowed).scatter_(-1, top, True) & allowed
    few = allowed.sum(-1, keepdim=True) <= budget
    return torch.where(few, allowed, keep)


def select_top_p(scores: torch.Tensor, allowed: torch.Tensor, p: float, kv_heads: int, scaling: float,
                 sink: int = 0, recent: int = 0) -> torch.Tensor:
    """Twilight's adaptive budget: per query and KV head the fewest keys whose approximate softmax mass
    (softmax of scaling × label scores, averaged over the group's heads) reaches p; sink/recent kept too."""
    b, h, q, k = scores.shape
    probs = torch.softmax((scores * scaling).masked_fill(~allowed, float("-inf")), dim=-1)
    probs = probs.view(b, kv_heads, h // kv_heads, q, k).mean(2)
    ordered, order = probs.sort(dim=-1, descending=True, stable=True)
    before = ordered.cumsum(-1) - ordered  # mass of the keys ranked above each one
    keep_sorted = before < p
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    allowed = allowed.expand_as(keep)
    return (keep | _forced(allowed, sink, recent)) & allowed


def masked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor,
                     scaling: float, kv_of_head: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    """Exact softmax attention of each query head over the keys its KV head keeps; (b, heads, queries, d)."""
    kv_of_head = kv_of_head.to(key.device)
    logits = (query.float() @ key[:, kv_of_head].float().transpose(-1, -2)) * scaling
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    weights = torch.softmax(logits.masked_fill(~keep[:, kv_of_head], float("-inf")), dim=-1)
    return (weights @ value[:, kv_of_head].float()).to(query.dtype)
