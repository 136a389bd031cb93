"""The PyTorch side of Double Sparsity decode: the label cache's two formats (built, read back, sized) and
top-T selection by torch.topk. Plain PyTorch, so decoding runs where Triton is absent (the CPU install); the
kernels (labels.py, select.py, decode.py) read the same formats.

  16 bits  (b, kv_heads, n, r) float16: each key's r heavy channels
   4 bits  (b, kv_heads, words + 1, n) int32, one plane per word: words = ceil(r / 8) planes of 8 channels x
           4 bits (channel 8w + j in bits 4j..4j+3 of word w), then one plane holding the key's min (low 16
           bits) and step (high 16 bits) as float16 (the evaluation path's codes, compress.attention.evaluation.sparse).
"""
from __future__ import annotations

import torch

__all__ = ["label_cache", "dequantize_labels", "label_bytes", "token_count", "select_top"]


def _half_bits(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF


def _bits_half(x: torch.Tensor) -> torch.Tensor:
    x = x & 0xFFFF
    return torch.where(x >= 0x8000, x - 0x10000, x).to(torch.int16).view(torch.float16).float()


def label_cache(key: torch.Tensor, heavy: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """Each KV head's heavy channels (`heavy` (kv_heads, r)) of every cached key, in the format of `bits`."""
    b, kvh, n, _ = key.shape
    r = heavy.shape[-1]
    index = heavy.to(key.device, torch.long)[None, :, None, :].expand(b, kvh, n, r)
    labels = torch.gather(key, -1, index)
    if bits == 16:  # float16 whatever the keys' dtype, as the evaluation path's --label-bits 16
        return labels.to(torch.float16).contiguous()
    if bits != 4:
        raise ValueError(f"the decode kernels read 16- or 4-bit labels, not {bits}")
    from compress.attention.evaluation.sparse import label_codes

    codes, low, step = label_codes(labels.float(), 4)
    words = -(-r // 8)
    codes = torch.nn.functional.pad(codes.to(torch.int64), (0, 8 * words - r)).view(b, kvh, n, words, 8)
    packed = (codes << (4 * torch.arange(8, device=key.device))).sum(-1)
    meta = _half_bits(low[..., 0]) | (_half_bits(step[..., 0]) << 16)
    planes = torch.cat([packed, meta[..., None]], -1)
    planes = torch.where(planes >= 2 ** 31, planes - 2 ** 32, planes).to(torch.int32)  # the same 32 bits
    return planes.permute(0, 1, 3, 2).contiguous()


def dequantize_labels(packed: torch.Tensor, channels: int) -> torch.Tensor:
    """(b, kv_heads, n, channels) float32 labels a 4-bit cache holds (PyTorch; the kernel's reference)."""
    words = packed.shape[2] - 1
    planes = packed.permute(0, 1, 3, 2).to(torch.int64) & 0xFFFFFFFF
    codes = (planes[..., :words, None] >> (4 * torch.arange(8, device=packed.device))) & 15
    codes = codes.flatten(-2)[..., :channels].float()
    meta = planes[..., words]
    return codes * _bits_half(meta >> 16)[..., None] + _bits_half(meta)[..., None]


def label_bytes(channels: int, bits: int, element: int = 2) -> int:
    """Bytes a cached token's labels take, per KV head."""
    return channels * element if bits == 16 else 4 * (-(-channels // 8) + 1)


def token_count(labels: torch.Tensor) -> int:
    """Tokens a label cache of either format holds."""
    return labels.shape[-1 if labels.dtype == torch.int32 else 2]


def select_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """(b, kv_heads, min(budget, n)) int32 token indices of the highest scores (all tokens if n ≤ budget)."""
    b, kvh, n = scores.shape
    if n <= budget:
        return torch.arange(n, device=scores.device, dtype=torch.int32).expand(b, kvh, n)
    return scores.topk(budget, dim=-1, sorted=False).indices.to(torch.int32)
