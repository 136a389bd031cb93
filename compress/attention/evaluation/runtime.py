"""Double Sparsity installed through transformers' attention-function registry (no model code patched).

`sparse_attention(model, settings, context)` makes every attention module of the model call our function
for the duration of the block: the first `dense_layers` layers and sliding-window (local) layers run the
implementation the model was using; every other layer scores past tokens with heavy-channel labels, keeps
a token set per query and KV head, and attends exactly over it. The yielded object counts tokens kept.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from compress.attention.calibration.calibrate import attention_parts
from compress.attention.calibration.channels import read_channel_file
from compress.attention.config import DoubleSparsity
from compress.attention.calibration.prior import prior_scores
from compress.attention.evaluation import sparse
from compress.errors import BadInput
from compress.model.roles import HeadLayout

__all__ = ["SparseAttention", "sparse_attention", "QUERY_CHUNK"]

NAME = "compress_double_sparsity"
QUERY_CHUNK = 512  # queries scored at once: bounds the (heads, chunk, keys) score tensors


@dataclass
class SparseAttention:
    """What one installed sparse attention uses, and how many tokens it kept."""

    settings: DoubleSparsity
    layout: HeadLayout
    layers: dict[int, int]  # id(attention module) -> layer index
    heavy: list[torch.Tensor | None]  # per layer: (heads, channels), None = exact scores (oracle)
    maps: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer (A, B) of projected labels, or None
    prior: list[torch.Tensor] | None  # per layer (kv heads, buckets) position prior, or None
    budget: int | None  # fixed T, or None under top-p
    top_p: float | None
    kept: float = 0.0  # tokens kept, summed over sparse (query, KV head, layer) rows
    allowed: float = 0.0  # tokens those rows could have read
    rows: int = 0

    def summary(self) -> dict:
        return {"budget": self.budget, "top_p": self.top_p, "labels": self.settings.labels,
                "position_prior": self.settings.position_prior, "channels": None if self.heavy[-1] is None
                else int(self.heavy[-1].shape[-1]),  # None below: no sparse layer ran
                "kept_per_query": self.kept / self.rows if self.rows else None,
                "kept_share": self.kept / self.allowed if self.rows else None}

    def attend(self, module, query, key, value, mask, scaling: float, softcap=None) -> torch.Tensor:
        """(batch, queries, heads, head_dim): sparse attention of one layer, in chunks of queries."""
        heavy = self.heavy[self.layers[id(module)]]
        kv_of_head = self.layout.kv_of_head()
        keys, queries = key.shape[-2], query.shape[-2]
        outputs = []
        for start in range(0, queries, QUERY_CHUNK):
            q = query[:, :, start:start + QUERY_CHUNK]
            # the chunk's queries sit at key positions keys - queries + start ... : cut keys after the chunk
            end = keys - queries + start + q.shape[-2]
            k, v = key[:, :, :end], value[:, :, :end]
            chunk_mask = None if mask is None else mask[..., start:start + q.shape[-2], :end]
            allowed = sparse.allowed_keys(q.shape[-2], end, chunk_mask, query.device)
            if self.maps is not None:
                a, b = self.maps[self.layers[id(module)]]
                scores = sparse.projected_scores(q, k, a, b, self.settings.label_bits, kv_of_head)
            else:
                scores = sparse.label_scores(q, k, heavy, self.settings.label_bits, kv_of_head)
            if self.prior is not None:
                scores = scores + prior_scores(self.prior[self.layers[id(module)]].to(q.device), kv_of_head,
                                               q.shape[-2], end)
            s = self.settings
            if self.top_p is not None:
                keep = sparse.select_top_p(scores, allowed, self.top_p, self.layout.num_kv_heads, scaling, s.sink, s.recent)
            else:
                keep = sparse.select_fixed(scores, allowed, self.budget, self.layout.num_kv_heads, s.sink, s.recent)
            self.kept += keep.sum().item()
            self.allowed += allowed.expand_as(keep).sum().item()
            self.rows += keep.shape[0] * keep.shape[1] * keep.shape[2]
            outputs.append(sparse.masked_attention(q, k, v, keep, scaling, kv_of_head, softcap))
        return torch.cat(outputs, dim=2).transpose(1, 2).contiguous()


def build(model, settings: DoubleSparsity, context: int, oracle: bool = False) -> SparseAttention:
    """Check the settings against the model and resolve them: heavy channels per layer, the budget T."""
    layout = HeadLayout.of(model.config)
    parts = attention_parts(model)
    channels = settings.channel_count(layout.head_dim)
    budget = settings.token_count(context)
    if budget is not None and settings.sink + settings.recent > budget:
        raise BadInput(f"sink {settings.sink} + recent {settings.recent} exceed the token budget {budget}", key="sink")
    maps = prior = None
    if oracle:
        heavy = [None] * len(parts)
    else:
        file = read_channel_file(settings.channel_file, model.config, len(parts), settings.mode)
        per_kv = settings.per_kv_head and layout.num_kv_heads < layout.num_heads
        heavy = [file.heavy(i, channels, per_kv) for i in range(len(parts))]
        if settings.labels == "projection":
            maps = file.projection(channels)
            file.warn_past_calibration(context)
        if settings.position_prior:
            prior = file.position_prior()
    if settings.dense_layers >= len(parts):
        raise BadInput(f"dense_layers {settings.dense_layers} leaves none of the model's {len(parts)} layers sparse",
                       key="dense_layers")
    return SparseAttention(settings, layout, {id(p.module): i for i, p in enumerate(parts)}, heavy, maps, prior, budget,
                           settings.top_p())


@contextmanager
def sparse_attention(model, settings: DoubleSparsity, context: int, oracle: bool = False):
    """Within the block the model attends sparsely (module docstring); yields the SparseAttention.
    `oracle`: select by the exact logits instead of labels (the best any label can do at that budget)."""
    from compress.calibrate.attention import override_attention

    state = build(model, settings, context, oracle)

    def attention(module, inner, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = state.layers.get(id(module))
        local = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        if layer is None or layer < settings.dense_layers or local:
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return state.attend(module, query, key, value, attention_mask, scale, kwargs.get("softcap")), None

    with override_attention([p.module for p in attention_parts(model)], attention, NAME):
        yield state
