"""Double Sparsity inside stock generation: `model.generate(ids, cache=DoubleSparseCache(model, settings))`.

`DoubleSparseCache` is a transformers DynamicCache whose full-attention layers keep keys and values in
preallocated buffers written in place (no concatenation per step), and whose sparse layers (from
`dense_layers` on) keep beside them a label cache (the formats of compress.attention.decode_kernels.decode_torch),
built over the cache when a sparse step first needs it, then appended as keys are (one Triton launch a step
where the kernels run): labels are never rebuilt over the past.
Creating one installs, once per model, an attention function through transformers' AttentionInterface
(`install`; no model code patched). That function runs the implementation the model was using, except for a
decode step (one query) of a layer whose keys a DoubleSparseCache has just stored: the step scores the layer's
labels, keeps the top T tokens per KV head and attends exactly over them, with the Triton kernels of
compress.attention.decode_kernels on CUDA (or in Triton's interpreter, TRITON_INTERPRET=1), a left-padded batch
run by run of rows with the same padding on views past their pads (the pads never read), else in PyTorch (the
pads never chosen).

T is the settings' token budget of the row's context (its cached tokens, padding excluded), or of `context`
when given (fixed for every step, as the evaluation mode fixes it); a step whose rows all hold ≤ T tokens runs
the model's own attention, and so does a step the dense rule keeps dense (compress.attention.decoding.dense_rule:
measured per GPU, sparse only where it is faster). The prefill, and any call of several queries, is dense. A forward without a
DoubleSparseCache runs as before, so an installed model stays usable with any other cache.
"""
from __future__ import annotations

import weakref

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from compress.attention.decoding.cache_layers import BufferedLayer, LabelledLayer

__all__ = ["DoubleSparseCache", "BufferedLayer", "LabelledLayer", "install", "uninstall", "generate_tokens", "continue_text", "NAME"]

NAME = "compress_double_sparse_cache"
# id(attention module) -> (the cache that has just stored that module's keys, layer index); read (and cleared)
# by the attention call that follows the store inside the same module's forward
_STORED: dict[int, tuple[weakref.ref, int]] = {}


class DoubleSparseCache(DynamicCache):
    """The KV and label caches of one generation with Double Sparsity decode steps (module docstring).
    `settings`: DoubleSparsity (compress.attention.config) or a channel file's path (default settings);
    `context`: fix T as that fraction of `context` tokens (else of each step's context); `selection`: the
    kernels' top-T select (compress.attention.decode_kernels.decode.SELECTIONS); `dense_rule`: the steps that
    stay dense because sparse would be slower (compress.attention.decoding.dense_rule): "measured" (the eager
    rule stored for the model's GPU; the fallback's for others and the CPU), a DenseRule, or None (every step with
    more tokens than T sparse, as the evaluation mode). Counts the sparse layer-steps run (`steps`) and the
    tokens they kept per row and KV head (`kept`)."""

    def __init__(self, model, settings, context: int | None = None, selection: str = "threshold",
                 dense_rule="measured"):
        from compress.attention.calibration.calibrate import attention_parts
        from compress.attention.config import DoubleSparsity
        from compress.attention.decoding.dense_rule import rule_for_device
        from compress.attention.decoding.generate import decoder_from_settings

        if isinstance(settings, str):
            settings = DoubleSparsity(channel_file=settings)
        if dense_rule == "measured":  # generate runs the step eagerly: the eager crossovers
            dense_rule = rule_for_device(next(model.parameters()).device, eager=True)
        self.plan = decoder_from_settings(model, settings, context, selection, dense_rule)
        super().__init__(config=model.config)
        self.modules = [part.module for part in attention_parts(model)]
        for i, heavy in enumerate(self.plan.heavy):
            if type(self.layers[i]) is not DynamicLayer:  # sliding-window layers stay transformers' own, dense
                continue
            key_map = None if self.plan.maps is None or heavy is None else self.plan.maps[i][1]
            self.layers[i] = BufferedLayer() if heavy is None else LabelledLayer(heavy, self.plan.label_bits, key_map)
        self.steps, self.kept = 0, 0.0
        self._mask, self._step = None, (None,)
        install(model)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if isinstance(self.layers[layer_idx], LabelledLayer):
            _STORED[id(self.modules[layer_idx])] = (weakref.ref(self), layer_idx)
        return keys, values

    def summary(self) -> dict:
        return {"sparse_steps": self.steps, "kept_per_step": self.kept / self.steps if self.steps else None}

    def attend(self, layer: int, module, inner, query, key, value, attention_mask, scaling, dropout, **kwargs):
        """One decode step of a sparse layer: (batch, 1, heads, head_dim), or the model's own attention when
        every row's budget covers its context or the dense rule keeps the step dense."""
        from compress.attention.decode_kernels.decode_torch import reference_decode
        from compress.attention.decoding.generate import kernels_available

        n, plan = key.shape[2], self.plan
        if attention_mask is not self._mask or (n, query.shape[0]) != self._step[0]:  # a step's layers share it
            allowed = _allowed_keys(attention_mask, n)
            counts, prefix = _padding(allowed, n)  # host reads: once a step
            padded = counts is not None
            counts = counts if padded else [n] * query.shape[0]
            budgets = [plan.budget(count) for count in counts]
            dense = all(t >= count for t, count in zip(budgets, counts)) or \
                not plan.pays(query.shape[0], n, key.shape[1], key.shape[-1])
            self._mask, self._step = attention_mask, ((n, query.shape[0]), allowed, counts, prefix, padded, budgets,
                                                      dense)
        _, allowed, counts, prefix, padded, budgets, dense = self._step
        if dense:
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        labels = self.layers[layer].label()
        prior = None if plan.prior is None else plan.prior[layer]
        scored = plan.label_source(layer, query[:, :, 0], query=True)
        if kernels_available(query) and prefix:
            out = self._kernel_runs(layer, query[:, :, 0], key, value, labels, scored, [n - c for c in counts],
                                    budgets, scale, prior)
        else:
            out = reference_decode(query[:, :, 0], key, value, labels, plan.heavy[layer], budgets, scale,
                                   plan.label_bits, prior, scored, allowed if padded else None)
        self.steps += 1
        self.kept += sum(min(t, count) for t, count in zip(budgets, counts)) / len(counts)
        return out[:, None], None

    def _kernel_runs(self, layer: int, query, key, value, labels, scored, starts: list[int], budgets: list[int],
                     scale: float, prior) -> torch.Tensor:
        """The Triton decode step over each run of neighbouring rows with the same padding, on views that start
        at the rows' first real token (no copies; the prior counts positions from there): (b, heads, d). A
        batch without padding is one run."""
        from compress.attention.decode_kernels.decode import select_tokens, sparse_decode

        plan, n, token_dim = self.plan, key.shape[2], self.layers[layer]._token_dim()
        outs, first = [], 0
        while first < len(starts):
            last, start = first + 1, starts[first]
            while last < len(starts) and starts[last] == start:
                last += 1
            rows = slice(first, last)
            index = select_tokens(scored[rows], labels[rows].narrow(token_dim, start, n - start), plan.heavy[layer],
                                  budgets[first], plan.selection, prior)[1]
            outs.append(sparse_decode(query[rows], key[rows, :, start:], value[rows, :, start:], index, scale))
            first = last
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def _padding(allowed: torch.Tensor | None, keys: int) -> tuple[list[int] | None, bool]:
    """(real tokens per row, or None without padding; whether each row's pads all precede its tokens)."""
    if allowed is None or bool(allowed.all()):
        return None, True
    counts = allowed.sum(-1)
    prefix = allowed == (torch.arange(keys, device=allowed.device) >= keys - counts[:, None])
    return counts.tolist(), bool(prefix.all())


def _allowed_keys(mask: torch.Tensor | None, keys: int) -> torch.Tensor | None:
    """(b or 1, keys) bool: the keys the step's query may read (the mask's last query row), None for all."""
    if mask is None:
        return None
    if mask.dim() == 2:  # a padding mask (b, keys), as flash attention takes it
        return mask[:, -keys:].bool()
    row = mask[:, 0, -1, :keys]
    return row if row.dtype == torch.bool else row == 0


def _attention(module, query, key, value, attention_mask, *, previous: str, scaling=None, dropout=0.0, **kwargs):
    from compress.calibrate.attention import inner_attention

    inner = inner_attention(module, previous)
    stored = _STORED.pop(id(module), None)
    cache = stored[0]() if stored else None
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    if cache is None or query.shape[2] != 1 or window or key is not cache.layers[stored[1]].keys:
        return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    return cache.attend(stored[1], module, inner, query, key, value, attention_mask, scaling, dropout, **kwargs)


def _configs(model) -> dict:
    from compress.attention.calibration.calibrate import attention_parts

    return {id(part.module.config): part.module.config for part in attention_parts(model)}


def install(model) -> None:
    """Route the model's attention through the Double Sparsity decode step (idempotent): calls with a
    DoubleSparseCache decode sparsely, every other call runs the implementation the model was using."""
    from functools import partial

    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for config in _configs(model).values():
        previous = config._attn_implementation or "eager"
        if previous.startswith(NAME):
            continue
        registered = f"{NAME}_{previous}"  # one name per wrapped implementation
        AttentionInterface.register(registered, partial(_attention, previous=previous))
        if previous in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(registered, ALL_MASK_ATTENTION_FUNCTIONS[previous])
        config._attn_implementation = registered


def uninstall(model) -> None:
    """Give the model back the attention implementation it had before `install`."""
    for config in _configs(model).values():
        current = config._attn_implementation or ""
        if current.startswith(NAME):
            config._attn_implementation = current[len(NAME) + 1:]


def generate_tokens(model, prompt: torch.Tensor, new_tokens: int, cache=None, **options
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (b, new_tokens), logits (b, new_tokens, vocab) float32) of stock `model.generate` with `cache`
    (a DoubleSparseCache) or transformers' own, greedy unless `options` say otherwise; no end-of-text stop."""
    from compress.attention.evaluation.measure import _cache_argument

    extra = {} if cache is None else {_cache_argument(model): cache}
    # an explicit mask: else generate takes every prompt token equal to the pad id for padding
    options = {"do_sample": False, "pad_token_id": 0, "attention_mask": torch.ones_like(prompt), **options}
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=None, return_dict_in_generate=True,
                             output_logits=True, **extra, **options)
    return out.sequences[:, prompt.shape[1]:], torch.stack(out.logits, 1).float()


def continue_text(model, tokenizer, text: str, new_tokens: int, settings, selection: str = "threshold") -> dict:
    """Greedy continuations of `text` through `model.generate`: dense, and with a DoubleSparseCache (T from each
    step's context); the texts, agreement, tokens kept per sparse layer-step, wall seconds."""
    import time

    from compress.attention.decoding.generate import kernels_available
    from compress.errors import BadInput

    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise BadInput("the prompt holds no tokens", key="prompt")
    ids = torch.tensor([ids], device=next(model.parameters()).device)
    sparse = DoubleSparseCache(model, settings, selection=selection, dense_rule=None)  # the budget's effect
    runs = {}
    for name, cache in (("dense", None), ("sparse", sparse)):
        began = time.perf_counter()
        runs[name] = generate_tokens(model, ids, new_tokens, cache)[0][0], time.perf_counter() - began
    same = (runs["dense"][0] == runs["sparse"][0]).tolist()
    return {"prompt_tokens": ids.shape[1], "new_tokens": new_tokens, "kernels": kernels_available(ids),
            **{name: tokenizer.decode(tokens.tolist()) for name, (tokens, _) in runs.items()},
            "agreement": sum(same) / len(same), "common_prefix": same.index(False) if False in same else len(same),
            "kept_per_step": sparse.summary()["kept_per_step"],
            "dense_seconds": runs["dense"][1], "sparse_seconds": runs["sparse"][1]}
