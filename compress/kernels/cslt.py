"""cuSPARSELt 2:4 products for prefill: the weight compressed once, the algorithm searched once per shape.

`torch._cslt_sparse_mm(Wc, xᵀ)` computes W·xᵀ (out × tokens). The search picks the fastest of
cuSPARSELt's algorithms for (out, in, token bucket, dtype); results are kept for the process and in
`$COMPRESS_CACHE/cslt-algorithms.json`, so later runs skip it. A search cannot run inside CUDA-graph
capture: warm up first (as graph capture does anyway).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["CsltWeight", "cslt_available"]

_ALGORITHMS: dict[str, int] = {}
_LOADED = False


def cslt_available() -> bool:
    return torch.cuda.is_available() and hasattr(torch, "_cslt_compress") and torch.backends.cusparselt.is_available()


def _cache_file() -> Path:
    from compress.defaults.assets import cache_dir

    return cache_dir() / "cslt-algorithms.json"


def _load_cache() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    try:
        _ALGORITHMS.update(json.loads(_cache_file().read_text()))
    except (OSError, ValueError):
        pass


def _save_cache() -> None:
    try:
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_ALGORITHMS, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs a search next time


def _bucket(tokens: int) -> int:
    return 1 << max(4, (tokens - 1).bit_length())


class CsltWeight:
    """A 2:4 weight (out × in, zeros in place, on the GPU) held in cuSPARSELt's compressed form."""

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        self.compressed = torch._cslt_compress(weight.contiguous())
        self._prefix = f"{self.out_features}x{self.in_features}"
        self._suffix = f"{str(weight.dtype).split('.')[-1]}/{torch.cuda.get_device_name(weight.device)}"
        self._chosen: dict[tuple[int, bool], int] = {}  # (token bucket, row-major) -> algorithm, per call site

    def _algorithm(self, xt: torch.Tensor) -> int:
        local = (_bucket(xt.shape[1]), xt.is_contiguous())
        if local not in self._chosen:
            layout = "row" if local[1] else "col"  # an algorithm found for one layout can fail on the other
            key = f"{self._prefix}/{local[0]}/{layout}/{self._suffix}"
            _load_cache()
            if key not in _ALGORITHMS:
                _ALGORITHMS[key] = int(torch._cslt_sparse_mm_search(self.compressed, xt))
                _save_cache()
            self._chosen[local] = _ALGORITHMS[key]
        return self._chosen[local]

    def mm_t(self, x2d: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """W·x2dᵀ (+ bias per row): the product feature-major, (out × tokens'), contiguous.

        cuSPARSELt takes token counts that are multiples of 8 only; others are padded with zero rows, so
        the result has tokens' = tokens rounded up to 8 columns (the extra ones are bias or zero)."""
        pad = -x2d.shape[0] % 8
        if pad:
            x2d = torch.nn.functional.pad(x2d, (0, 0, 0, pad))
        xt = x2d.t()
        return torch._cslt_sparse_mm(self.compressed, xt, bias, alg_id=self._algorithm(xt))
