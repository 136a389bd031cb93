"""Double Sparsity decode kernels against dense decode attention (torch SDPA), on a GPU.

`check_decode` compares the kernels with the PyTorch reference on fresh random inputs; `time_decode` times
label scoring + top-T selection + sparse attention as one CUDA graph, against SDPA over the whole cache,
and reports the bytes-read limit of the speedup: (K + V bytes) / (16-bit label bytes + selected K + V bytes).
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch

__all__ = ["SHAPES", "random_decode_inputs", "check_decode", "time_decode", "bench_attention"]

SHAPES = {"mha-32x128": (32, 32, 128), "gqa-32/8x128": (32, 8, 128)}  # heads, kv heads, head_dim


def random_decode_inputs(batch: int, heads: int, kv_heads: int, context: int, head_dim: int, channels: int,
                         dtype, device="cuda", seed: int = 0):
    """(query, key, value, heavy) with a few large channels per KV head, as trained models have."""
    generator = torch.Generator(device=device).manual_seed(seed)
    query = torch.randn(batch, heads, head_dim, device=device, dtype=torch.float32, generator=generator)
    key = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=dtype, generator=generator)
    value = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=dtype, generator=generator)
    heavy = torch.stack([torch.randperm(head_dim, device=device, generator=generator)[:channels]
                         for _ in range(kv_heads)])
    boost = torch.ones(kv_heads, head_dim, device=device)
    boost.scatter_(1, heavy, 4.0)  # the heavy channels carry most of q·k
    query = (query * boost.repeat_interleave(heads // kv_heads, 0)).to(dtype)
    return query, key, value, heavy


def dense_decode(query, key, value, scale: float) -> torch.Tensor:
    out = torch.nn.functional.scaled_dot_product_attention(query[:, :, None], key, value, scale=scale,
                                                           enable_gqa=key.shape[1] != query.shape[1])
    return out[:, :, 0]


def _reference(query, key, value, heavy, budget: int, scale: float):
    """float32 PyTorch: the label scores (16-bit labels) and the output over a given token set."""
    from compress.attention import sparse

    heads, kv_heads = query.shape[1], key.shape[1]
    kv_of_head = torch.arange(heads, device=query.device) // (heads // kv_heads)
    scores = sparse.label_scores(query.float()[:, :, None], key.float(), heavy[kv_of_head], 16, kv_of_head)
    scores = scores.view(query.shape[0], kv_heads, heads // kv_heads, -1).sum(2)

    def attend(index):
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=query.device).scatter_(-1, index.long(), True)
        return sparse.masked_attention(query.float()[:, :, None], key.float(), value.float(), keep[:, :, None],
                                       scale, kv_of_head)[:, :, 0]

    return scores, attend


def _select(query, labels, heavy, budget: int, selection: str):
    from compress.attention import decode, select

    b, kvh, n = labels.shape[:3]
    if selection == "radix" and n > budget:
        histogram = torch.zeros(b * kvh, select.BINS, device=query.device, dtype=torch.int32)
        scores = decode.score_labels(query, labels, heavy, 1024, torch.float16, histogram)
        return scores, select.radix_top(scores, histogram, budget)
    scores = decode.score_labels(query, labels, heavy, dtype=torch.float32 if selection == "topk" else torch.float16)
    return scores, decode.select_top(scores, budget)


def check_decode(batch: int, heads: int, kv_heads: int, context: int, head_dim: int, channels: int, budget: int,
                 dtype, seed: int = 0, device: str = "cuda", selection: str = "radix") -> dict:
    """Kernels vs reference: label scores, the selected set (equal to the reference's top-T up to near-ties at
    the boundary), the output vs attention over that set, and vs over the reference's own set."""
    from compress.attention import decode

    query, key, value, heavy = random_decode_inputs(batch, heads, kv_heads, context, head_dim, channels, dtype,
                                                    device, seed)
    scale = head_dim ** -0.5
    labels = decode.label_cache(key, heavy)
    scores, index = _select(query, labels, heavy, budget, selection)
    out = decode.sparse_decode(query, key, value, index, scale)
    ref_scores, attend = _reference(query, key, value, heavy, budget, scale)
    kept = min(budget, context)
    ref_index = ref_scores.topk(kept, dim=-1).indices
    threshold = ref_scores.gather(-1, ref_index).amin(-1, keepdim=True)
    picked = ref_scores.gather(-1, index.long())
    tolerance = 1e-3 * ref_scores.abs().amax(-1, keepdim=True)
    same_set = torch.zeros_like(ref_scores, dtype=torch.bool).scatter_(-1, index.long(), True) == \
        torch.zeros_like(ref_scores, dtype=torch.bool).scatter_(-1, ref_index, True)
    over_kernel_set = attend(index)
    over_reference_set = attend(ref_index)

    def rel(a, b):
        return float((a.float() - b).norm() / b.norm())

    return {"batch": batch, "heads": heads, "kv_heads": kv_heads, "context": context, "budget": budget,
            "dtype": str(dtype).replace("torch.", ""), "selection": selection,
            "score_error": float((scores.float() - ref_scores).abs().max() / ref_scores.abs().max()),
            "selected_unique": bool((index.sort(-1).values.diff(dim=-1) > 0).all()) if kept > 1 else True,
            "selected_within_tolerance": bool((picked >= threshold - tolerance).all()),
            "rows_with_set_equal_reference": float(same_set.all(-1).float().mean()),
            "output_error": rel(out, over_kernel_set), "output_error_vs_reference_set": rel(out, over_reference_set),
            "finite": bool(torch.isfinite(out).all())}


def _graph_time(fn: Callable[[], object], replays: int = 20, repeats: int = 5) -> float:
    """Median milliseconds of one call, `fn` captured in a CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # compiles and warms up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / replays)
    del graph
    return statistics.median(times)


def time_decode(batch: int, heads: int, kv_heads: int, context: int, head_dim: int, channels: int, budget: int,
                dtype) -> dict:
    """Milliseconds of dense SDPA decode vs Double Sparsity (whole, and each part alone), and the limits."""
    from compress.attention import decode

    query, key, value, heavy = random_decode_inputs(batch, heads, kv_heads, context, head_dim, channels, dtype)
    scale = head_dim ** -0.5
    labels = decode.label_cache(key, heavy)
    scores, index = _select(query, labels, heavy, budget, "topk-half")

    def sparse(selection):
        return lambda: decode.double_sparse_decode(query, key, value, labels, heavy, budget, scale, selection)

    dense_ms = _graph_time(lambda: dense_decode(query, key, value, scale))
    sparse_ms = _graph_time(sparse("topk-half"))
    parts = {"score_ms": _graph_time(lambda: decode.score_labels(query, labels, heavy, dtype=torch.float16)),
             "select_ms": _graph_time(lambda: decode.select_top(scores, budget)),
             "attend_ms": _graph_time(lambda: decode.sparse_decode(query, key, value, index, scale)),
             # the other selections: float32 scores and torch.topk; the radix select over float16 scores
             "sparse_topk_ms": _graph_time(sparse("topk")),
             "sparse_radix_ms": _graph_time(sparse("radix"))}
    element = key.element_size()
    kv_bytes = 2 * batch * kv_heads * context * head_dim * element
    sparse_bytes = batch * kv_heads * (context * channels + 2 * min(budget, context) * head_dim) * element
    limit = kv_bytes / sparse_bytes
    speedup = dense_ms / sparse_ms
    del query, key, value, labels, scores, index
    torch.cuda.empty_cache()
    return {"batch": batch, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "context": context,
            "channels": channels, "budget": budget, "dtype": str(dtype).replace("torch.", ""),
            "dense_ms": dense_ms, "sparse_ms": sparse_ms, **parts, "speedup": speedup,
            "dense_tb_per_s": kv_bytes / dense_ms / 1e9, "bytes_limit_speedup": limit,
            "share_of_limit": speedup / limit}


def bench_attention(contexts: list[int], batches: list[int], shapes: list[str], dtypes: list[str],
                    fraction: int = 16, on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """time_decode over the grid, 1/fraction of the channels and of the context."""
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            heads, kv_heads, head_dim = SHAPES[shape]
            for batch in batches:
                for context in contexts:
                    row = {"shape": shape, **time_decode(batch, heads, kv_heads, context, head_dim,
                                                         head_dim // fraction, context // fraction,
                                                         getattr(torch, dtype))}
                    rows.append(row)
                    on_row(row)
    return rows
