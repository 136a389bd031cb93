"""Seeing attention internals (q and k after RoPE) through transformers' attention-function registry.

`capture_attention(modules, on_qk)` registers an attention function that hands each watched attention
module's query and key states (batch, heads, tokens, head_dim; after RoPE, before the KV repeat of GQA)
to `on_qk(name, query, key)`, then runs the implementation the model was using. No model code is
patched: the model's config names our function for the duration of the block.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from compress.calibrate.collectors import ChannelMeanAbs

__all__ = ["capture_attention", "collect_qk"]

NAME = "compress_capture"


def _inner(module: nn.Module, implementation: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation and implementation != "eager" and implementation in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    return sys.modules[type(module).__module__].eager_attention_forward  # the family's own eager attention


@contextmanager
def capture_attention(modules: dict[str, nn.Module], on_qk: Callable[[str, torch.Tensor, torch.Tensor], None]):
    """Within the block, every forward of a module in `modules` ({name: attention module}) reports its
    post-RoPE query and key states to `on_qk`."""
    from transformers import AttentionInterface

    configs = {id(m.config): m.config for m in modules.values()}
    previous = {key: config._attn_implementation for key, config in configs.items()}
    watched = {id(m): name for name, m in modules.items()}

    def attention(module, query, key, value, attention_mask, **kwargs):
        name = watched.get(id(module))
        if name is not None:
            on_qk(name, query, key)
        return _inner(module, previous[id(module.config)])(module, query, key, value, attention_mask, **kwargs)

    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for key, config in configs.items():
        # one name per wrapped implementation, whose masks the model keeps building as before
        name = f"{NAME}_{previous[key]}"
        AttentionInterface.register(name, attention)
        if previous[key] in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[previous[key]])
        config._attn_implementation = name
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]


@contextmanager
def collect_qk(modules: dict[str, nn.Module]) -> Iterator[dict[str, dict[str, ChannelMeanAbs]]]:
    """Mean |q| and |k| per head and channel after RoPE: {name: {"q": collector, "k": collector}}, each
    collector's features laid out as heads × head_dim."""
    collectors: dict[str, dict[str, ChannelMeanAbs]] = {}

    def on_qk(name, query, key):
        for label, states in (("q", query), ("k", key)):
            flat = states.detach().transpose(1, 2).reshape(-1, states.shape[1] * states.shape[-1])
            if label not in collectors.setdefault(name, {}):
                collectors[name][label] = ChannelMeanAbs(flat.shape[-1], flat.device)
            collectors[name][label].update(flat)

    with capture_attention(modules, on_qk):
        yield collectors
