"""Channel statistics over every calibration window, and the channel file they rank.

qk  mean |q ⊙ k| per head and channel after RoPE (k of the key/value head the query head reads), seen
    through transformers' attention-function registry (compress.calibrate.attention), not by patching;
q/k mean |q| / |k| per channel of the q_proj / k_proj outputs (before RoPE), as the reference defines them.
Sums run over all windows (the reference keeps only the last block of its qk statistic).
The same pass accumulates the position prior (compress.attention.calibration.prior) and, with `projection`, the
post-RoPE q/k moments projected labels are fitted from (compress.attention.calibration.projection).
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from compress.errors import BadInput
from compress.model.layers import decoder_layers, target_linears
from compress.model.roles import HeadLayout, role_of

__all__ = ["AttentionParts", "attention_parts", "ChannelStatistics", "channel_statistics", "rank_channels",
           "write_statistics"]


@dataclass
class AttentionParts:
    name: str  # the attention module's full name
    module: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear


def attention_parts(model) -> list[AttentionParts]:
    """The attention module of every decoder layer with its separate q and k projections."""
    parts = []
    for layer_name, layer in decoder_layers(model):
        linears = {role_of(n): (n, m) for n, m in target_linears(layer, layer_name).items() if role_of(n) in ("q", "k", "qkv")}
        if "qkv" in linears or not ("q" in linears and "k" in linears):
            raise BadInput(f"{layer_name}: Double Sparsity needs separate q and k projections")
        q_name, q_proj = linears["q"]
        parent = q_name.rsplit(".", 1)[0]
        module = layer.get_submodule(parent[len(layer_name) + 1:]) if parent != layer_name else layer
        parts.append(AttentionParts(parent, module, q_proj, linears["k"][1]))
    return parts


@dataclass
class ChannelStatistics:
    sums: list[torch.Tensor]  # per layer: (rows, head_dim) float64 sums of the statistic
    tokens: int
    windows: int
    moments: list | None = None  # per layer: projection.QKMoments, when asked for
    prior: list | None = None  # per layer: prior.PriorSums

    def means(self) -> list[torch.Tensor]:
        return [s / max(self.tokens, 1) for s in self.sums]


@torch.no_grad()
def channel_statistics(model, windows: torch.Tensor, mode: str, device: str | torch.device = "cpu",
                       progress=None, projection: bool = False) -> ChannelStatistics:
    """Accumulate the `mode` statistic over every window of `windows` (n, seqlen), one forward each;
    the position prior's sums too, and with `projection` the q/k moments."""
    from compress.attention.calibration.prior import PriorSums
    from compress.attention.calibration.projection import QKMoments
    from compress.calibrate.attention import capture_attention
    from compress.evaluate import on_device

    layout = HeadLayout.of(model.config)
    parts = attention_parts(model)
    index = {p.name: i for i, p in enumerate(parts)}
    sums: list[torch.Tensor | None] = [None] * len(parts)
    kv_of_head = layout.kv_of_head()
    moments = [QKMoments() for _ in parts] if projection else None
    prior = [PriorSums() for _ in parts]

    def add(i: int, value: torch.Tensor) -> None:
        value = value.double().cpu()
        sums[i] = value if sums[i] is None else sums[i] + value

    def on_qk(name, query, key):
        prior[index[name]].update(query, key)
        if moments is not None:
            moments[index[name]].update(query, key)
        if mode != "qk":
            return
        q = query.float()
        k = key.float()[:, kv_of_head.to(key.device)]
        add(index[name], (q * k).abs().sum(dim=(0, 2)))

    def on_output(i: int, heads: int):
        def hook(module, inputs, output):
            add(i, output.float().abs().reshape(-1, heads, layout.head_dim).sum(0))
        return hook

    tokens = 0
    with ExitStack() as stack:
        stack.enter_context(capture_attention({p.name: p.module for p in parts}, on_qk))
        if mode != "qk":
            for i, p in enumerate(parts):
                proj, heads = (p.q_proj, layout.num_heads) if mode == "q" else (p.k_proj, layout.num_kv_heads)
                handle = proj.register_forward_hook(on_output(i, heads))
                stack.callback(handle.remove)
        model_on = stack.enter_context(on_device(model, torch.device(device)))
        for n, window in enumerate(windows):
            model_on(input_ids=window[None].to(device), use_cache=False)
            tokens += window.numel()
            if progress:
                progress(n + 1, len(windows))
    return ChannelStatistics([s for s in sums], tokens, len(windows), moments, prior)


def rank_channels(statistics: ChannelStatistics, mode: str, layout: HeadLayout):
    """(rows, kv_rows): per layer, a permutation per head (per KV head for k) and per KV head, where the
    KV-head ranking sums the statistic over the query heads sharing that KV head."""
    from compress.attention.calibration.channels import ranking

    rows, kv_rows = [], []
    group = layout.num_heads // layout.num_kv_heads
    for mean in statistics.means():
        rows.append(ranking(mean))
        kv = mean if mode == "k" else mean.view(layout.num_kv_heads, group, layout.head_dim).sum(1)
        kv_rows.append(ranking(kv))
    return rows, kv_rows


def write_statistics(out, statistics: ChannelStatistics, mode: str, config, force: bool = False,
                     staging=None) -> int:
    """Rank, fit the prior (and the projection when its moments were accumulated) and write the channel file
    `out` (write_channel_file: `force`, a job's `staging`); returns the number of layers."""
    from compress.attention.calibration.channels import write_channel_file
    from compress.attention.calibration.projection import fit_layer

    rows, kv_rows = rank_channels(statistics, mode, HeadLayout.of(config))
    maps = None if statistics.moments is None else [fit_layer(m) for m in statistics.moments]
    prior = None if statistics.prior is None else [p.fit() for p in statistics.prior]
    write_channel_file(out, mode, config, rows, kv_rows, statistics.windows, statistics.tokens, maps, prior, force,
                       staging)
    return len(rows)
