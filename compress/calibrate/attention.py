"""Seeing attention internals (q and k after RoPE) through transformers' attention-function registry.

`capture_attention(modules, on_qk)` registers an attention function that hands each watched attention
module's query and key states (batch, heads, tokens, head_dim; after RoPE, before the KV repeat of GQA)
to `on_qk(name, query, key)`, then runs the implementation the model was using. No model code is
patched: the model's config names our function for the duration of the block.
`override_attention(modules, wrap)` is the general form: `wrap` may also replace the attention itself
(compress.attention runs Double Sparsity through it).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from compress.calibrate.collectors import ChannelMeanAbs

__all__ = ["override_attention", "capture_attention", "collect_qk", "inner_attention"]

NAME = "compress_capture"


def inner_attention(module: nn.Module, implementation: str) -> Callable:
    """The attention function `implementation` names for `module` (eager: its family's own)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation and implementation != "eager" and implementation in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    return sys.modules[type(module).__module__].eager_attention_forward  # the family's own eager attention


@contextmanager
def override_attention(modules, wrap: Callable, name: str = NAME):
    """Within the block, every attention forward of the models behind `modules` calls
    `wrap(module, inner, query, key, value, attention_mask, **kwargs)`, `inner` being the implementation the
    model was using; the model keeps building its masks as before."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    configs = {id(m.config): m.config for m in modules}
    previous = {key: config._attn_implementation for key, config in configs.items()}

    def attention(module, query, key, value, attention_mask, **kwargs):
        inner = inner_attention(module, previous[id(module.config)])
        return wrap(module, inner, query, key, value, attention_mask, **kwargs)

    for key, config in configs.items():
        registered = f"{name}_{previous[key]}"  # one name per wrapped implementation
        AttentionInterface.register(registered, attention)
        if previous[key] in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(registered, ALL_MASK_ATTENTION_FUNCTIONS[previous[key]])
        config._attn_implementation = registered
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]


@contextmanager
def capture_attention(modules: dict[str, nn.Module], on_qk: Callable[[str, torch.Tensor, torch.Tensor], None]):
    """Within the block, every forward of a module in `modules` ({name: attention module}) reports its
    post-RoPE query and key states to `on_qk`."""
    watched = {id(m): name for name, m in modules.items()}

    def wrap(module, inner, query, key, value, attention_mask, **kwargs):
        name = watched.get(id(module))
        if name is not None:
            on_qk(name, query, key)
        return inner(module, query, key, value, attention_mask, **kwargs)

    with override_attention(modules.values(), wrap):
        yield


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
