"""The PyTorch side of Double Sparsity decode: the label cache's two formats (built, read back, sized), top-T
selection by torch.topk, and a whole decode step (`reference_decode`, what the CPU runs). Plain PyTorch, so decoding runs where Triton is absent (the CPU install); the
kernels (labels.py, select.py, decode.py) read the same formats.

  16 bits  (b, kv_heads, n, r) float16: each key's r heavy channels
   4 bits  (b, kv_heads, words + 1, n) int32, one plane per word: words = ceil(r / 8) planes of 8 channels x
           4 bits (channel 8w + j in bits 4j..4j+3 of word w), then one plane holding the key's min (low 16
           bits) and step (high 16 bits) as float16 (the evaluation path's codes, compress.attention.evaluation.sparse).
"""
from __future__ import annotations

import torch

__all__ = ["label_cache", "dequantize_labels", "label_bytes", "token_count", "select_top", "reference_decode"]


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


def reference_decode(query, key, value, labels, heavy, budget, scale: float, bits: int,
                     prior: torch.Tensor | None = None, scored: torch.Tensor | None = None,
                     allowed: torch.Tensor | None = None) -> torch.Tensor:
    """double_sparse_decode's math in PyTorch (float32 scores, torch.topk): (b, heads, d). `budget`: T, or one
    per row; `scored`: the query the labels are scored with (projected labels), when not the query itself;
    `allowed` (b, n) bool: the keys each row may read (left padding: a row's tokens start at its first allowed
    key, where its position prior starts too), else every key."""
    b, heads, d = query.shape
    kv_heads, n, r = key.shape[1], key.shape[2], heavy.shape[-1]
    group = heads // kv_heads
    cached = dequantize_labels(labels, r) if bits == 4 else labels.float()  # (b, kv_heads, n, r)
    index = heavy.long()[None].expand(b, kv_heads, r)
    scored = query if scored is None else scored
    q = torch.gather(scored.float().view(b, kv_heads, group, -1), -1, index[:, :, None].expand(b, kv_heads, group, r))
    scores = torch.einsum("bkr,bknr->bkn", q.sum(2), cached)
    if prior is not None:  # each query head's prior for the row's last query, summed over the group
        from compress.attention.calibration.prior import prior_scores

        each_kv = torch.arange(kv_heads, device=prior.device)
        if allowed is None:
            scores = scores + group * prior_scores(prior, each_kv, 1, n)[0, :, 0].to(scores.device)
        else:
            starts = (n - allowed.sum(-1)).tolist()
            for start in sorted(set(starts)):
                rows = [i for i, s in enumerate(starts) if s == start]
                scores[rows, :, start:] += group * prior_scores(prior, each_kv, 1, n - start)[0, :, 0].to(scores.device)
    per_row = isinstance(budget, list)  # host values: no read of a tensor (a CUDA graph holds the step)
    chosen = scores.masked_fill(~allowed[:, None], float("-inf")) if allowed is not None else scores
    chosen = chosen.topk(min(n, max(budget) if per_row else budget), dim=-1).indices  # (b, kv_heads, T)
    keep = None
    if per_row:
        keep = torch.arange(chosen.shape[-1], device=scores.device) < torch.tensor(budget, device=scores.device)[:, None, None]
    if allowed is not None:
        inside = allowed[:, None].expand(b, kv_heads, n).gather(-1, chosen)
        keep = inside if keep is None else keep & inside
    gathered = chosen[..., None].expand(-1, -1, -1, d)
    k, v = torch.gather(key, 2, gathered).float(), torch.gather(value, 2, gathered).float()
    logits = query.float().view(b, kv_heads, group, d) @ k.transpose(-1, -2) * scale
    if keep is not None:
        logits = logits.masked_fill(~keep[:, :, None], float("-inf"))
    return (torch.softmax(logits, -1) @ v).view(b, heads, d).to(query.dtype)
