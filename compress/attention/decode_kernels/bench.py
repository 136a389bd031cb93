"""Double Sparsity decode kernels against dense decode attention (torch SDPA), on a GPU.

`check_decode` compares the kernels with the PyTorch reference on fresh random inputs; `time_decode` times
label scoring + top-T selection + sparse attention as one CUDA graph, against SDPA over the whole cache,
and reports the bytes-read limit of the speedup: (K + V bytes) / (label bytes + selected K + V bytes).
"""
from __future__ import annotations

import itertools
import statistics
from typing import Callable

import torch

__all__ = ["SHAPES", "PATHS", "random_decode_inputs", "check_decode", "check_failures", "time_decode", "tune_decode",
           "bench_attention"]

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


def _reference(query, key, value, heavy, labels, label_bits: int, scale: float):
    """float32 PyTorch: the label scores of the cache's own format, the evaluation path's label scores
    (compress.attention.evaluation.sparse, same bits) and attention over a given token set."""
    from compress.attention.decode_kernels import labels as label_format
    from compress.attention.evaluation import sparse

    (b, heads, _), kv_heads = query.shape, key.shape[1]
    group = heads // kv_heads
    kv_of_head = torch.arange(heads, device=query.device) // group
    evaluation = sparse.label_scores(query.float()[:, :, None], key.float(), heavy[kv_of_head], label_bits, kv_of_head)
    evaluation = evaluation.view(b, kv_heads, group, -1).sum(2)
    scores = evaluation
    if label_bits != 16:  # the packed cache decoded in PyTorch: its min and step are float16
        index = heavy[kv_of_head].to(query.device)[None].expand(b, heads, -1)
        q = torch.gather(query.float(), -1, index).view(b, kv_heads, group, -1).sum(2)
        scores = torch.einsum("bkr,bknr->bkn", q, label_format.dequantize_labels(labels, heavy.shape[-1]))

    def attend(index):
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=query.device).scatter_(-1, index.long(), True)
        return sparse.masked_attention(query.float()[:, :, None], key.float(), value.float(), keep[:, :, None],
                                       scale, kv_of_head)[:, :, 0]

    return scores, evaluation, attend


def check_decode(batch: int, heads: int, kv_heads: int, context: int, head_dim: int, channels: int, budget: int,
                 dtype, seed: int = 0, device: str = "cuda", selection: str = "threshold",
                 label_bits: int = 16) -> dict:
    """Kernels vs reference: label scores, the selected set (equal to the reference's top-T up to near-ties at
    the boundary), the output vs attention over that set, and vs over the reference's own set."""
    from compress.attention.decode_kernels import decode

    query, key, value, heavy = random_decode_inputs(batch, heads, kv_heads, context, head_dim, channels, dtype,
                                                    device, seed)
    scale = head_dim ** -0.5
    labels = decode.label_cache(key, heavy, label_bits)
    scores, index = decode.select_tokens(query, labels, heavy, budget, selection)
    out = decode.sparse_decode(query, key, value, index, scale)
    ref_scores, evaluation, attend = _reference(query, key, value, heavy, labels, label_bits, scale)
    kept = min(budget, context)
    ref_index = ref_scores.topk(kept, dim=-1).indices
    threshold = ref_scores.gather(-1, ref_index).amin(-1, keepdim=True)
    picked = ref_scores.gather(-1, index.long())
    tolerance = 1e-3 * ref_scores.abs().amax(-1, keepdim=True)
    same_set = torch.zeros_like(ref_scores, dtype=torch.bool).scatter_(-1, index.long(), True) == \
        torch.zeros_like(ref_scores, dtype=torch.bool).scatter_(-1, ref_index, True)
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index.long(), True)
    own = scores.float()  # the kernel's scores: its set must be their top-T (ties in any order)
    exact = own.masked_fill(~chosen, float("inf")).amin(-1) >= own.masked_fill(chosen, float("-inf")).amax(-1)
    over_kernel_set = attend(index)
    over_reference_set = attend(ref_index)

    def rel(a, b):
        return float((a.float() - b).norm() / b.norm())

    def max_error(a, b):
        return float((a.float() - b).abs().max() / b.abs().max())

    return {"batch": batch, "heads": heads, "kv_heads": kv_heads, "context": context, "budget": budget,
            "dtype": str(dtype).replace("torch.", ""), "selection": selection, "label_bits": label_bits,
            "score_error": max_error(scores, ref_scores), "score_error_vs_evaluation": max_error(scores, evaluation),
            "selected_unique": bool((index.sort(-1).values.diff(dim=-1) > 0).all()) if kept > 1 else True,
            "selected_within_tolerance": bool((picked >= threshold - tolerance).all()),
            "selected_top_of_own_scores": bool(exact.all()),
            "rows_with_set_equal_reference": float(same_set.all(-1).float().mean()),
            "output_error": rel(out, over_kernel_set), "output_error_vs_reference_set": rel(out, over_reference_set),
            "finite": bool(torch.isfinite(out).all())}


# relative output error over the kernel's own set: fp16/bf16 probabilities in the P·V product
OUTPUT_TOLERANCE = {"float16": 3e-3, "bfloat16": 2e-2}


def check_failures(row: dict) -> list[str]:
    """The rules a check_decode row breaks, the same for the GPU tests and the kernel benchmark: float16
    scores (topk-half, threshold) may reorder near-ties within their rounding (1e-3 of the largest); 4-bit
    labels are the evaluation path's codes with min and step rounded to float16; only near-ties at the
    boundary may leave the reference's top-T."""
    topk = row["selection"] == "topk"
    rules = {"finite": row["finite"], "unique": row["selected_unique"],
             "top of its own scores": row["selected_top_of_own_scores"],
             "scores": row["score_error"] < (1e-4 if topk else 1e-3),
             "scores vs the evaluation path": row["score_error_vs_evaluation"] < (5e-3 if row["label_bits"] == 4 else 1e-3),
             "selected within tolerance": row["selected_within_tolerance"],
             "set equal the reference's (topk: most rows; T ≥ n: every row)":
                 row["rows_with_set_equal_reference"] == 1.0 if row["budget"] >= row["context"] else
                 (row["rows_with_set_equal_reference"] > 0.5 if topk else True),
             "output": row["output_error"] < OUTPUT_TOLERANCE[row["dtype"]]}
    return [name for name, held in rules.items() if not held]


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


# json key -> (label bits, selection) of each full path timed; sparse_ms is double_sparse_decode's default
PATHS = {"sparse_ms": (4, "threshold"), "sparse_threshold_16bit_ms": (16, "threshold"),
         "sparse_topk_half_4bit_ms": (4, "topk-half"), "sparse_topk_half_ms": (16, "topk-half"),
         "sparse_topk_ms": (16, "topk")}


def time_decode(batch: int, heads: int, kv_heads: int, context: int, head_dim: int, channels: int, budget: int,
                dtype) -> dict:
    """Milliseconds of dense SDPA decode vs Double Sparsity (each path of PATHS, and the parts of the default
    alone), and the bytes-read limits."""
    from compress.attention.decode_kernels import decode, labels as label_format, select

    query, key, value, heavy = random_decode_inputs(batch, heads, kv_heads, context, head_dim, channels, dtype)
    scale = head_dim ** -0.5
    caches = {bits: decode.label_cache(key, heavy, bits) for bits in (4, 16)}
    rows = batch * kv_heads
    plan = select.threshold_plan(rows, context, budget, query.device)
    scores = decode.score_labels(query, caches[4], heavy, torch.float16, plan)
    index = select.threshold_top(scores, plan, budget) if context > budget else decode.select_top(scores, budget)

    def path(bits, selection):
        return lambda: decode.double_sparse_decode(query, key, value, caches[bits], heavy, budget, scale, selection)

    def score(bits, gather=True):  # with the threshold and the candidates, as the default path scores
        plans = lambda: select.threshold_plan(rows, context, budget, query.device) if gather else None  # noqa: E731
        return lambda: decode.score_labels(query, caches[bits], heavy, torch.float16, plans())

    dense_ms = _graph_time(lambda: dense_decode(query, key, value, scale))
    times = {name: _graph_time(path(*how)) for name, how in PATHS.items()}
    from compress.attention.calibration.prior import BUCKETS

    prior = torch.randn(kv_heads, BUCKETS, device=query.device)  # the default path plus a position prior
    times["sparse_prior_ms"] = _graph_time(lambda: decode.double_sparse_decode(query, key, value, caches[4], heavy,
                                                                               budget, scale, "threshold", prior))
    parts = {"score_ms": _graph_time(score(4)), "score_16bit_ms": _graph_time(score(16)),
             "score_alone_ms": _graph_time(score(4, False)),
             "select_ms": _graph_time(lambda: select.threshold_top(scores, plan, budget)),
             "attend_ms": _graph_time(lambda: decode.sparse_decode(query, key, value, index, scale))}
    element = key.element_size()
    kv_bytes = 2 * batch * kv_heads * context * head_dim * element
    attend_bytes = 2 * batch * kv_heads * min(budget, context) * head_dim * element
    limits = {bits: kv_bytes / (attend_bytes + batch * kv_heads * context * label_format.label_bytes(channels, bits))
              for bits in (4, 16)}
    speedup = dense_ms / times["sparse_ms"]
    del query, key, value, caches, scores, index, plan
    torch.cuda.empty_cache()
    return {"batch": batch, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "context": context,
            "channels": channels, "budget": budget, "dtype": str(dtype).replace("torch.", ""), "label_bits": 4,
            "selection": "threshold", "dense_ms": dense_ms, **times, **parts, "speedup": speedup,
            "dense_tb_per_s": kv_bytes / dense_ms / 1e9, "bytes_limit_speedup": limits[4],
            "bytes_limit_speedup_16bit": limits[16], "share_of_limit": speedup / limits[4]}


def tune_decode(batch: int, heads: int, kv_heads: int, context: int, head_dim: int, channels: int, budget: int,
                dtype) -> list[dict]:
    """Milliseconds of the scoring and attention kernels alone over a small grid of launch settings."""
    from compress.attention.decode_kernels import decode, select

    query, key, value, heavy = random_decode_inputs(batch, heads, kv_heads, context, head_dim, channels, dtype)
    labels = decode.label_cache(key, heavy, 4)
    rows = batch * kv_heads
    _, index = decode.select_tokens(query, labels, heavy, budget)
    found = []
    for block_n, programs, warps in itertools.product((512, 1024, 2048), (1024, 4096, 16384), (4, 8)):
        ms = _graph_time(lambda: decode.score_labels(query, labels, heavy, torch.float16,
                                                     select.threshold_plan(rows, context, budget, query.device),
                                                     block_n, programs, warps))
        found.append({"kernel": "score", "block": block_n, "programs": programs, "num_warps": warps, "ms": ms})
    for block_t, target, stages in itertools.product((32, 64), (528, 1056, 2112), (2, 3, 4)):
        ms = _graph_time(lambda: decode.sparse_decode(query, key, value, index, head_dim ** -0.5, block_t, target,
                                                      4, stages))
        found.append({"kernel": "attend", "block": block_t, "programs": target, "num_warps": 4,
                      "num_stages": stages, "ms": ms})
    del query, key, value, labels, index
    torch.cuda.empty_cache()
    return [{"batch": batch, "heads": heads, "kv_heads": kv_heads, "context": context, **row} for row in found]


def bench_attention(contexts: list[int], batches: list[int], shapes: list[str], dtypes: list[str],
                    fraction: int = 16, on_row: Callable[[dict], None] = lambda row: None,
                    channel_fraction: int | None = None) -> list[dict]:
    """time_decode over the grid, 1/fraction of the context and 1/channel_fraction (default: 1/fraction) of
    the channels."""
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            heads, kv_heads, head_dim = SHAPES[shape]
            for batch in batches:
                for context in contexts:
                    row = {"shape": shape, **time_decode(batch, heads, kv_heads, context, head_dim,
                                                         head_dim // (channel_fraction or fraction),
                                                         context // fraction,
                                                         getattr(torch, dtype))}
                    rows.append(row)
                    on_row(row)
    return rows
