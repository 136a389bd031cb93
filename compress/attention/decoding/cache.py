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
compress.attention.decode_kernels on CUDA (or in Triton's interpreter, TRITON_INTERPRET=1) for batches without
padding, else in PyTorch (padded rows: left padding, the pads never chosen).

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

__all__ = ["DoubleSparseCache", "BufferedLayer", "LabelledLayer", "install", "uninstall", "generate_tokens", "continue_text", "NAME"]

NAME = "compress_double_sparse_cache"
# id(attention module) -> (the cache that has just stored that module's keys, layer index); read (and cleared)
# by the attention call that follows the store inside the same module's forward
_STORED: dict[int, tuple[weakref.ref, int]] = {}


class BufferedLayer(DynamicLayer):
    """transformers' growing key/value cache in preallocated buffers: new tokens are written in place (the
    buffers grow by a quarter when full) instead of concatenated, which copies the whole cache every step.
    `keys` / `values` are views of the filled part."""

    GROWTH, ROUND = 0.25, 256

    def __init__(self):
        super().__init__()
        self._buffers: list[torch.Tensor] | None = None  # keys, values (b, kv_heads, capacity, d)
        self.length = 0

    def _capacity(self, needed: int) -> int:
        return -(-int(needed * (1 + self.GROWTH)) // self.ROUND) * self.ROUND

    def _resize(self, capacity: int) -> None:
        """Buffers of `capacity` tokens holding the cached ones (a subclass widens its own buffers too)."""
        def widen(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty(*t.shape[:2], capacity, t.shape[-1])
            out[:, :, :self.length] = t[:, :, :self.length]
            return out

        self._buffers = [widen(t) for t in self._buffers]

    def _views(self) -> None:
        self.keys, self.values = (t[:, :, :self.length] for t in self._buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._buffers, self.length = [key_states[:, :, :0], value_states[:, :, :0]], 0
        count = key_states.shape[2]
        if self.length + count > self._buffers[0].shape[2]:
            self._resize(self._capacity(self.length + count))
        for buffer, new in zip(self._buffers, (key_states, value_states)):
            buffer[:, :, self.length:self.length + count] = new
        self.length += count
        self._views()
        return self.keys, self.values

    def reset(self) -> None:
        super().reset()
        self._buffers, self.length = None, 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the (negative) number of tokens to remove")
        if tokens_to_remove and self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def _rows(self, pick) -> None:
        """Apply `pick` to every buffer's batch rows."""
        if self.is_initialized:
            self._buffers = [pick(t) for t in self._buffers]
            self._views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rows(lambda t: t[indices, ...])

    def offload(self):
        self._rows(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        if self.is_initialized and self._buffers[0].device != self.device:
            self._rows(lambda t: t.to(self.device, non_blocking=True))


class LabelledLayer(BufferedLayer):
    """One sparse layer: the buffered key/value cache plus the keys' labels. `heavy` (kv_heads, r) int32
    channels the labels hold; `key_map` (kv_heads, head_dim, r): projected labels (k B), else None. The labels
    are built over the whole cache when a sparse step first needs them (`label`), then appended as keys are:
    where the kernels run, one Triton launch a step writes the key, the value and the labels."""

    def __init__(self, heavy: torch.Tensor, bits: int, key_map: torch.Tensor | None = None):
        super().__init__()
        self.heavy, self.bits, self.key_map = heavy, bits, key_map
        self.labels: torch.Tensor | None = None  # 16 bits (b, kv_heads, n, r); 4 bits (b, kv_heads, planes, n)
        self._label_buffer: torch.Tensor | None = None

    def _token_dim(self) -> int:
        return 3 if self.bits == 4 else 2

    def _resize(self, capacity: int) -> None:
        super()._resize(capacity)
        if self._label_buffer is not None:
            shape = list(self._label_buffer.shape)
            shape[self._token_dim()] = capacity
            out = self._label_buffer.new_empty(shape)
            out.narrow(self._token_dim(), 0, self.length).copy_(self._label_buffer.narrow(self._token_dim(), 0,
                                                                                            self.length))
            self._label_buffer = out

    def _views(self) -> None:
        super()._views()
        if self._label_buffer is not None:
            self.labels = self._label_buffer.narrow(self._token_dim(), 0, self.length)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        from compress.attention.decoding.generate import _one_launch

        start = self.length
        if self._label_buffer is not None and start < self._buffers[0].shape[2] and \
                _one_launch(key_states, value_states):  # key, value and labels in one launch
            from compress.attention.decode_kernels.append import append_token

            append_token(*self._buffers, self._label_buffer, key_states, value_states, self.heavy, start,
                         self.key_map)
            self.length += 1
            self._views()
            return self.keys, self.values
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        if self._label_buffer is not None:  # labelled since a sparse step: keep the labels whole
            self._write_labels(start)
        return keys, values

    def label(self) -> torch.Tensor:
        """The labels of every cached key (built over the cache the first time)."""
        if self._label_buffer is None:
            b, kvh, capacity = self._buffers[0].shape[:3]
            r = self.heavy.shape[-1]
            shape = (b, kvh, capacity, r) if self.bits == 16 else (b, kvh, (r + 7) // 8 + 1, capacity)
            self._label_buffer = self._buffers[0].new_empty(shape, dtype=torch.float16 if self.bits == 16 else
                                                            torch.int32)
            self._write_labels(0)
        return self.labels

    def _write_labels(self, start: int) -> None:
        from compress.attention.decode_kernels.decode_torch import label_cache
        from compress.attention.decoding.generate import kernels_available

        keys = self.keys[:, :, start:]
        source = keys if self.key_map is None else keys.float() @ self.key_map[None]
        if source.shape[2] == 1 and kernels_available(source):
            from compress.attention.decode_kernels.append import append_labels

            append_labels(self._label_buffer, source, self.heavy, start)
        else:
            self._label_buffer.narrow(self._token_dim(), start, source.shape[2]).copy_(
                label_cache(source, self.heavy, self.bits))
        self.labels = self._label_buffer.narrow(self._token_dim(), 0, self.length)  # keys stay the same object

    def reset(self) -> None:
        super().reset()
        self.labels = self._label_buffer = None

    def _rows(self, pick) -> None:
        if self._label_buffer is not None:
            self._label_buffer = pick(self._label_buffer)
        super()._rows(pick)


class DoubleSparseCache(DynamicCache):
    """The KV and label caches of one generation with Double Sparsity decode steps (module docstring).
    `settings`: DoubleSparsity (compress.attention.config) or a channel file's path (default settings);
    `context`: fix T as that fraction of `context` tokens (else of each step's context); `selection`: the
    kernels' top-T select (compress.attention.decode_kernels.decode.SELECTIONS); `dense_rule`: the steps that
    stay dense because sparse would be slower (compress.attention.decoding.dense_rule): "measured" (the rule
    stored for the model's GPU; the fallback's for others and the CPU), a DenseRule, or None (every step with
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
        if dense_rule == "measured":
            dense_rule = rule_for_device(next(model.parameters()).device)
        self.plan = decoder_from_settings(model, settings, context, selection, dense_rule)
        super().__init__(config=model.config)
        self.modules = [part.module for part in attention_parts(model)]
        for i, heavy in enumerate(self.plan.heavy):
            if type(self.layers[i]) is not DynamicLayer:  # sliding-window layers stay transformers' own, dense
                continue
            key_map = None if self.plan.maps is None or heavy is None else self.plan.maps[i][1]
            self.layers[i] = BufferedLayer() if heavy is None else LabelledLayer(heavy, self.plan.label_bits, key_map)
        self.steps, self.kept = 0, 0.0
        self._mask, self._padded = None, False
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
        every row's budget covers its context."""
        from compress.attention.decode_kernels.decode_torch import reference_decode
        from compress.attention.decoding.generate import kernels_available

        n = key.shape[2]
        allowed = _allowed_keys(attention_mask, n)
        if attention_mask is not self._mask:  # the layers of a step share one mask: one host read a step
            self._mask, self._padded = attention_mask, allowed is not None and not bool(allowed.all())
        padded = self._padded
        counts = allowed.sum(-1).tolist() if padded else [n] * query.shape[0]
        budgets = [self.plan.budget(count) for count in counts]
        plan = self.plan
        if all(t >= count for t, count in zip(budgets, counts)) or \
                not plan.pays(query.shape[0], n, key.shape[1], key.shape[-1]):
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        labels = self.layers[layer].label()
        prior = None if plan.prior is None else plan.prior[layer]
        scored = plan.label_source(layer, query[:, :, 0], query=True)
        if kernels_available(query) and not padded:
            from compress.attention.decode_kernels.decode import select_tokens, sparse_decode

            index = select_tokens(scored, labels, plan.heavy[layer], budgets[0], plan.selection, prior)[1]
            out = sparse_decode(query[:, :, 0], key, value, index, scale)
        else:
            out = reference_decode(query[:, :, 0], key, value, labels, plan.heavy[layer], budgets, scale,
                                   plan.label_bits, prior, scored, allowed if padded else None)
        self.steps += 1
        self.kept += sum(min(t, count) for t, count in zip(budgets, counts)) / len(counts)
        return out[:, None], None


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
