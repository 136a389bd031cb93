"""The layers of compress.attention.decoding.cache's DoubleSparseCache: transformers' growing key/value cache in
preallocated buffers written in place (`BufferedLayer`), and a sparse layer's label cache beside them
(`LabelledLayer`: built over the cache when a sparse step first needs it, then appended as keys are; where the
kernels run one Triton launch a step writes the key, the value and the labels)."""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

__all__ = ["BufferedLayer", "LabelledLayer"]


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
        self.keys, self.values = (t.narrow(2, 0, self.length) for t in self._buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self._buffers is None:
            # set here, not through lazy_initialization: its signature differs across transformers versions
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            self._buffers, self.length = [key_states[:, :, :0], value_states[:, :, :0]], 0
        count = key_states.shape[2]
        if self.length + count > self._buffers[0].shape[2]:
            self._resize(self._capacity(self.length + count))
        for buffer, new in zip(self._buffers, (key_states, value_states)):
            buffer.narrow(2, self.length, count).copy_(new)  # (narrow + copy_: less host time than indexing)
        self.length += count
        self._views()
        return self.keys, self.values

    def reset(self) -> None:
        super().reset()
        self._buffers, self.length = None, 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the (negative) number of tokens to remove")
        if tokens_to_remove and self._buffers is not None:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def _rows(self, pick) -> None:
        """Apply `pick` to every buffer's batch rows."""
        if self._buffers is not None:
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
        if self._buffers is not None and self._buffers[0].device != self.device:
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
