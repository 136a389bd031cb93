"""Double Sparsity decoding with buffers of its own, for timing a decode step as one CUDA graph
(benchmarks/attention_decode.py) and for the checks of compress.attention.decoding.generate_check. Stock
`model.generate` goes through compress.attention.decoding.cache instead, which reads the same settings
(`decoder_from_settings`) and runs the same decode step.

The model runs its own forward; our attention function (installed through transformers' attention-function
registry, no model code patched) keeps the KV cache and, next to it, the label cache of every layer. The
model is called without transformers' cache (use_cache=False, explicit position_ids): each attention call
hands over only the new tokens' post-RoPE q/k/v, the `Decoder` appends them to its own buffers (sized up
front: no growth inside a captured step) and the new keys' labels to the label cache (labels are never
rebuilt over the past: that would read every cached key). The first call of a generation is the prefill
(the model's own attention, dense); every later call is one decode step (q_len 1): the first `dense_layers`
layers and sliding-window layers attend densely (the implementation the model was using), the others score
the cached labels, keep the top T tokens per KV head and attend exactly over them, with the Triton kernels
of compress.attention.decode_kernels.decode on CUDA (or in Triton's interpreter, TRITON_INTERPRET=1), else
the same math in PyTorch (decode_torch.reference_decode). A step with ≤ T cached tokens (the new one
included) attends to all of them, as in the evaluation mode. With a `rule` (compress.attention.decoding.dense_rule),
a step it keeps dense runs the model's own attention and writes no labels: the first sparse step labels every
cached key. Batches without padding.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from compress.attention.decoding.dense_rule import DenseRule

__all__ = ["Decoder", "decoder_from_settings", "installed", "greedy_generate", "step_inputs", "kernels_available",
           "MODES", "SELECTIONS"]

NAME = "compress_double_sparsity_decode"
MODES = ("sparse", "dense", "skip")  # skip: attention returns zeros (timing the rest of the step)
SELECTIONS = ("threshold", "topk-half", "topk")  # compress.attention.decode_kernels.decode.SELECTIONS (Triton imported lazily)


def kernels_available(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@dataclass
class LayerStore:
    keys: torch.Tensor  # (b, kv_heads, capacity, d)
    values: torch.Tensor
    labels: torch.Tensor | None  # 16 bits (b, kv_heads, capacity, r); 4 bits (b, kv_heads, planes, capacity)
    length: int = 0
    labelled: int = 0  # tokens 0 .. labelled - 1 have their labels (built when a sparse step first needs them)

    def grow(self, capacity: int) -> None:
        def widen(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = capacity
            out = t.new_empty(shape)
            out.narrow(dim, 0, self.length).copy_(t.narrow(dim, 0, self.length))
            return out

        self.keys, self.values = widen(self.keys, 2), widen(self.values, 2)
        if self.labels is not None:
            self.labels = widen(self.labels, self._label_dim())

    def _label_dim(self) -> int:
        return 3 if self.labels.dtype == torch.int32 else 2

    def write(self, key: torch.Tensor, value: torch.Tensor) -> None:
        start, count = self.length, key.shape[2]
        self.keys[:, :, start:start + count] = key
        self.values[:, :, start:start + count] = value
        self.length += count

    def cached(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        n = self.length
        labels = None if self.labels is None else self.labels.narrow(self._label_dim(), 0, n)
        return self.keys[:, :, :n], self.values[:, :, :n], labels


def _one_launch(key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether append_token takes this step's key and value: one token, unit-stride power-of-two channels."""
    d = key.shape[-1]
    return key.shape[2] == 1 and kernels_available(key) and key.stride(-1) == 1 and value.stride(-1) == 1 and \
        d & (d - 1) == 0 and value.shape[-1] == d


@dataclass
class Decoder:
    """One generation's caches and attention settings. `heavy`: per decoder layer (kv_heads, r) heavy
    channels, or None for a layer that stays dense; `budget(n)`: T for a step with n cached tokens."""

    heavy: list[torch.Tensor | None]
    budget: Callable[[int], int]
    label_bits: int = 4
    selection: str = "threshold"
    mode: str = "sparse"  # labels are appended in this mode only (a decoder switched mid-way has stale ones)
    capacity: int = 0  # buffers hold at least this many tokens (no growth inside a captured step)
    layers: dict[int, int] = field(default_factory=dict)  # id(attention module) -> layer index
    stores: dict[int, LayerStore] = field(default_factory=dict)
    steps: int = 0  # sparse layer-steps run
    kept: float = 0.0  # tokens those steps kept per KV head, summed
    prior: list[torch.Tensor | None] | None = None  # per layer: (kv heads, buckets) position prior
    maps: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (A (heads, head_dim, r), B (kv
    # heads, head_dim, r)): projected labels; the label cache holds k B, the kernels score q A (heavy: all r dims)
    rule: DenseRule | None = None  # when set, a step the rule keeps dense runs the model's own attention
    fused: bool = True  # a sparse step's key, value and labels written by one launch where the kernels run

    def label_source(self, layer: int, states: torch.Tensor, query: bool = False) -> torch.Tensor:
        """What the labels are taken from: the states themselves, or their projection (float32) under maps
        (keys (b, kv heads, n, d) by B; queries (b, heads, d) by their KV head's A, expanded per head)."""
        if self.maps is None:
            return states
        a, b = self.maps[layer]
        if not query:
            return states.float() @ b[None]
        return (states.float()[:, :, None] @ a[None])[:, :, 0]

    def __post_init__(self) -> None:
        if self.label_bits not in (4, 16):
            raise ValueError(f"the decode kernels read 4- or 16-bit labels, not {self.label_bits}")
        if self.mode not in MODES or self.selection not in SELECTIONS:
            raise ValueError(f"mode {self.mode!r} / selection {self.selection!r} unknown")

    @property
    def length(self) -> int:
        return next(iter(self.stores.values())).length if self.stores else 0

    def rewind(self, length: int) -> None:
        """Forget tokens after `length` (their buffers are overwritten by the next step)."""
        for store in self.stores.values():
            store.length = min(store.length, length)
            store.labelled = min(store.labelled, length)

    def start(self, key: torch.Tensor, value: torch.Tensor, layer: int) -> LayerStore:
        b, kvh, n, d = key.shape
        capacity = self.capacity if self.capacity >= n else 2 * n
        heavy = self.heavy[layer]
        labels = None
        if heavy is not None:
            r = heavy.shape[-1]
            shape = (b, kvh, capacity, r) if self.label_bits == 16 else (b, kvh, (r + 7) // 8 + 1, capacity)
            labels = key.new_empty(shape, dtype=torch.float16 if self.label_bits == 16 else torch.int32)
        store = LayerStore(key.new_empty(b, kvh, capacity, d), value.new_empty(b, kvh, capacity, value.shape[-1]),
                           labels)
        self.stores[layer] = store
        return store

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor, labelled: bool | None = None) -> LayerStore:
        """Write new keys and values; with `labelled` (default: in sparse mode) also the labels of every cached
        key not labelled yet (the new ones, and the past when a step first needs them: a step the rule keeps
        dense writes none)."""
        store = self.stores.get(layer)
        if store is None or store.length == 0:
            store = self.start(key, value, layer)
        elif store.length + key.shape[2] > store.keys.shape[2]:
            store.grow(2 * (store.length + key.shape[2]))
        labelled = self.heavy[layer] is not None and (self.mode == "sparse" if labelled is None else labelled)
        if labelled and self.fused and store.labelled == store.length and _one_launch(key, value):
            from compress.attention.decode_kernels.append import append_token

            key_map = None if self.maps is None else self.maps[layer][1]
            append_token(store.keys, store.values, store.labels, key, value, self.heavy[layer], store.length, key_map)
            store.length += 1
            store.labelled = store.length
            return store
        store.write(key, value)
        if labelled:
            self.label(layer, store)
        return store

    def label(self, layer: int, store: LayerStore) -> None:
        """Labels of the store's keys from store.labelled on: one launch for a single key where the kernels
        run (label_cache's many small ops would dominate a graphed step), else label_cache."""
        from compress.attention.decode_kernels.decode_torch import label_cache

        start, heavy = store.labelled, self.heavy[layer]
        source = self.label_source(layer, store.keys[:, :, start:store.length])
        if source.shape[2] == 1 and kernels_available(source):
            from compress.attention.decode_kernels.append import append_labels

            append_labels(store.labels, source, heavy, start)
        elif source.shape[2]:
            store.labels.narrow(store._label_dim(), start, source.shape[2]).copy_(
                label_cache(source, heavy, self.label_bits))
        store.labelled = store.length

    def pays(self, batch: int, context: int, kv_heads: int, head_dim: int) -> bool:
        """Whether a step over `context` cached tokens runs sparse under the rule (always without one)."""
        return self.rule is None or self.rule.sparse(batch, context, kv_heads, head_dim)

    def attention(self, module, inner, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = self.layers[id(module)]
        fresh = layer not in self.stores or self.stores[layer].length == 0
        if not fresh and query.shape[2] != 1:
            raise ValueError("after the prefill the decoder takes one token per step")
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        sparse = not fresh and self.mode == "sparse" and self.heavy[layer] is not None and not window and \
            self.pays(query.shape[0], self.stores[layer].length + 1, key.shape[1], key.shape[-1])
        store = self.append(layer, key, value, labelled=sparse)
        if fresh:  # the prefill: the model's own attention over the prompt
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        keys, values, labels = store.cached()
        if self.mode == "skip":
            return query.new_zeros(query.shape[0], 1, query.shape[1], query.shape[-1]), None
        if not sparse:
            if window:
                keys, values = keys[:, :, -window:], values[:, :, -window:]
            return inner(module, query, keys, values, None, scaling=scaling, dropout=dropout, **kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        budget = self.budget(keys.shape[2])
        heavy = self.heavy[layer]
        prior = None if self.prior is None else self.prior[layer]
        scored = self.label_source(layer, query[:, :, 0], query=True)  # (b, heads, d or r)
        if kernels_available(query):
            from compress.attention.decode_kernels.decode import select_tokens, sparse_decode

            index = select_tokens(scored, labels, heavy, budget, self.selection, prior)[1]
            out = sparse_decode(query[:, :, 0], keys, values, index, scale)
        else:
            from compress.attention.decode_kernels.decode_torch import reference_decode

            out = reference_decode(query[:, :, 0], keys, values, labels, heavy, budget, scale, self.label_bits, prior,
                                   scored)
        self.steps += 1
        self.kept += min(budget, keys.shape[2])
        return out[:, None], None


@contextmanager
def installed(model, decoder: Decoder):
    """Within the block every attention module of `model` runs `decoder.attention`."""
    from compress.attention.calibration.calibrate import attention_parts
    from compress.calibrate.attention import override_attention

    parts = attention_parts(model)
    if len(parts) != len(decoder.heavy):
        raise ValueError(f"the decoder has {len(decoder.heavy)} layers' channels, the model {len(parts)} layers")
    decoder.layers = {id(p.module): i for i, p in enumerate(parts)}
    with override_attention([p.module for p in parts], decoder.attention, NAME):
        yield decoder


def decoder_from_settings(model, settings, context: int | None = None, selection: str = "threshold",
                          rule: DenseRule | None = None) -> Decoder:
    """A Decoder from DoubleSparsity settings (compress.attention.config) and their channel file: each
    sparse layer's per-KV-head channel set; T from `context` (fixed, as the evaluation mode does) or, when
    None, from each step's cached tokens; `rule`: the steps it keeps dense (None: every step sparse). No
    sparse layer (dense_layers ≥ the model's layers): BadInput."""
    from compress.attention.calibration.calibrate import attention_parts
    from compress.attention.calibration.channels import read_channel_file
    from compress.errors import BadInput
    from compress.model.roles import HeadLayout

    if settings.top_p() is not None:
        raise BadInput("the decode kernels take a fixed token budget (a fraction or a count), not top-p", key="tokens")
    if settings.sink or settings.recent:
        raise BadInput("the decode kernels keep no sink or recent window", key="sink" if settings.sink else "recent")
    if settings.label_bits == 8:
        raise BadInput("the decode kernels read 4- or 16-bit labels", key="label_bits")
    if getattr(model.config, "attn_logit_softcapping", None):
        raise BadInput("the decode kernels have no attention logit softcap (this model caps its logits)")
    layout = HeadLayout.of(model.config)
    if not settings.per_kv_head and layout.num_kv_heads < layout.num_heads:
        raise BadInput("the decode kernels read one channel set per KV head (per_kv_head)", key="per_kv_head")
    layers = len(attention_parts(model))
    channels = settings.channel_count(layout.head_dim)
    file = read_channel_file(settings.channel_file, model.config, layers, settings.mode)
    device = next(model.parameters()).device
    if settings.dense_layers >= layers:
        raise BadInput(f"dense_layers {settings.dense_layers} leaves none of the model's {layers} layers sparse",
                       key="dense_layers")
    heavy = [None if i < settings.dense_layers else file.kv_rows[i][:, :channels].to(device, torch.int32)
             for i in range(layers)]
    maps = None
    if settings.labels == "projection":  # every one of the r projected dims is a label
        kv_of_head = layout.kv_of_head()
        maps = [(a[kv_of_head].to(device, torch.float32), b.to(device, torch.float32))
                for a, b in file.projection(channels)]
        every = torch.arange(channels, device=device, dtype=torch.int32).expand(layout.num_kv_heads, channels)
        heavy = [None if h is None else every.contiguous() for h in heavy]
    prior = None
    if settings.position_prior:
        prior = [p.to(device, torch.float32).contiguous() for p in file.position_prior()]
    return Decoder(heavy, lambda n: settings.token_count(context or n), settings.label_bits, selection, prior=prior,
                   maps=maps, rule=rule)


def step_inputs(batch: int, length: int, device) -> dict:
    """A decode step's keyword arguments besides input_ids: the new token's position, and a prepared 4D mask
    (unread: the decoder's cache holds every token) that keeps transformers from inspecting position_ids with
    a host sync, which a CUDA graph cannot hold."""
    return {"position_ids": torch.tensor([[length]], device=device), "use_cache": False,
            "attention_mask": torch.ones(batch, 1, 1, length + 1, dtype=torch.bool, device=device)}


@torch.no_grad()
def greedy_generate(model, prompt: torch.Tensor, new_tokens: int, decoder: Decoder, forced: torch.Tensor | None = None,
                    reserve: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (b, new_tokens), logits (b, new_tokens, vocab) float32) of greedy decoding after a prefill of
    `prompt` (b, n): the first token from the prefill, each next one from a decode step. `forced` (b,
    new_tokens): feed these tokens instead of the greedy ones (teacher forcing, to compare logits step by
    step). `reserve`: size the buffers for the whole generation up front (else they grow by doubling)."""
    decoder.stores.clear()
    if reserve:
        decoder.capacity = max(decoder.capacity, prompt.shape[1] + new_tokens)
    tokens, logits = [], []
    with installed(model, decoder):
        out = model(input_ids=prompt, use_cache=False).logits[:, -1].float()
        for step in range(new_tokens):
            logits.append(out)
            tokens.append(out.argmax(-1) if forced is None else forced[:, step])
            if step + 1 < new_tokens:
                inputs = step_inputs(prompt.shape[0], decoder.length, prompt.device)
                out = model(input_ids=tokens[-1][:, None], **inputs).logits[:, -1].float()
    return torch.stack(tokens, 1), torch.stack(logits, 1)
