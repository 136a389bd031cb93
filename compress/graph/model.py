"""GraphGPS for graph classification, in a form that pruning can shrink.

Each layer is PyG's GPSConv computation (local GINE message passing + global multi-head attention +
MLP, batch norms, residuals), written out so that pruning reaches inside it: attention heads are rows
of separate q/k/v projections and columns of the output projection (removing a head shrinks them),
a layer may have no attention at all (heads = 0; its local message passing stays), and a linear token
scorer may pick the nodes that enter attention. A node left out of attention (or every node, in a
layer without it) gets a zero attention output, so its global branch is its residual alone; it still
takes part in local message passing. tests/test_graph_model.py checks a layer against GPSConv itself.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from compress.config import StrictConfig

__all__ = ["GraphModelConfig", "GraphGPS", "ARCHITECTURE"]

ARCHITECTURE = "compress-graphgps"


class GraphModelConfig(StrictConfig):
    architecture: Literal["compress-graphgps"] = ARCHITECTURE
    encoder: Literal["atoms", "linear"]
    """atoms: integer OGB atom/bond features, one embedding per column (as OGB's AtomEncoder); linear: floats."""
    node_dims: list[int]
    edge_dims: list[int]
    num_classes: int
    channels: int = 64
    pe_dim: int = 16
    walk_length: int = 20
    heads: list[int]
    """Attention heads per layer; 0 = the layer's attention was removed."""
    head_dim: int = 16
    dropout: float = 0.0
    token_keep: float = 1.0
    """Fraction of each graph's nodes (rounded up) that enter global attention; < 1 needs token scorers."""
    train_epochs: int = 0
    data: str = ""
    split_seed: int = 0


class FeatureEmbedding(nn.Module):
    """Sum of one embedding per integer feature column (the construction of OGB's Atom/BondEncoder)."""

    def __init__(self, dims: list[int], out: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(d, out) for d in dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(table(x[:, i]) for i, table in enumerate(self.tables))


class Attention(nn.Module):
    """Multi-head self-attention within each graph; `record` keeps the attention maps (with grads)."""

    def __init__(self, channels: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q, self.k, self.v = (nn.Linear(channels, inner) for _ in range(3))
        self.o = nn.Linear(inner, channels)
        self.record = False
        self.maps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (attention B×H×N×N, node mask B×N)

    def forward(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        from torch_geometric.utils import to_dense_batch

        q, mask = to_dense_batch(self.q(x), batch)
        k, _ = to_dense_batch(self.k(x), batch)
        v, _ = to_dense_batch(self.v(x), batch)
        b, n = mask.shape
        q, k, v = (t.view(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        attention = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        if self.record:
            if attention.requires_grad:
                attention.retain_grad()
            self.maps.append((attention, mask))
        out = (attention @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)[mask]
        return self.o(out)


class GPSLayer(nn.Module):
    def __init__(self, channels: int, heads: int, head_dim: int, dropout: float):
        from torch_geometric.nn import GINEConv

        super().__init__()
        self.conv = GINEConv(nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels)))
        self.attn = Attention(channels, heads, head_dim) if heads else None
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(2 * channels, channels), nn.Dropout(dropout))
        self.norm1, self.norm2, self.norm3 = (nn.BatchNorm1d(channels) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, edge_index, edge_attr, batch, keep: torch.Tensor | None = None) -> torch.Tensor:
        local = self.norm1(self.dropout(self.conv(x, edge_index, edge_attr)) + x)
        if self.attn is None:
            attended = torch.zeros_like(x)
        elif keep is None:
            attended = self.attn(x, batch)
        else:
            attended = torch.zeros_like(x).index_put((keep,), self.attn(x[keep], batch[keep]))
        out = local + self.norm2(self.dropout(attended) + x)
        return self.norm3(out + self.mlp(out))


def keep_top_per_graph(scores: torch.Tensor, batch: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ceil(fraction · n) highest-scoring nodes of each graph (ties: the lower index)."""
    from torch_geometric.utils import to_dense_batch

    dense, mask = to_dense_batch(scores, batch, fill_value=float("-inf"))
    order = dense.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    quota = torch.ceil(mask.sum(1) * fraction).clamp(min=1)
    kept = (rank < quota[:, None])[mask]
    return kept.nonzero().view(-1)


class GraphGPS(nn.Module):
    def __init__(self, config: GraphModelConfig):
        super().__init__()
        self.config = config
        c = config.channels
        if config.encoder == "atoms":
            self.node_encoder, self.edge_encoder = FeatureEmbedding(config.node_dims, c - config.pe_dim), \
                FeatureEmbedding(config.edge_dims, c)
        else:
            self.node_encoder = nn.Linear(config.node_dims[0], c - config.pe_dim)
            self.edge_encoder = nn.Linear(config.edge_dims[0], c)
        self.pe_norm = nn.BatchNorm1d(config.walk_length)
        self.pe_lin = nn.Linear(config.walk_length, config.pe_dim)
        self.layers = nn.ModuleList(GPSLayer(c, h, config.head_dim, config.dropout) for h in config.heads)
        self.scorers = nn.ModuleList(nn.Linear(c, 1) for _ in config.heads) if config.token_keep < 1 else None
        self.head = nn.Sequential(nn.Linear(c, c // 2), nn.ReLU(), nn.Linear(c // 2, config.num_classes))
        self.fitting_from: int | None = None  # while scorers are fitted: layers from here on take every node

    def forward(self, data) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        x = torch.cat([self.node_encoder(data.x), self.pe_lin(self.pe_norm(data.pe))], dim=-1)
        edge_attr = self.edge_encoder(data.edge_attr)
        for i, layer in enumerate(self.layers):
            keep = None
            fitting = self.fitting_from is not None and i >= self.fitting_from
            if self.scorers is not None and layer.attn is not None and not fitting:
                keep = keep_top_per_graph(self.scorers[i](x).view(-1), data.batch, self.config.token_keep)
            x = layer(x, data.edge_index, edge_attr, data.batch, keep)
        return self.head(global_mean_pool(x, data.batch))
