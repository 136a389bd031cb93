"""End-to-end prefill and decode of a 7B-shape 2:4 Llama on the GPU: our kernels vs the dense model.

Usage: PYTHONPATH=. python -m benchmarks.e2e_7b [--layers 32] [--batch 1 4] [--seqlen 2048] [--json out.json]
       PYTHONPATH=. python -m benchmarks.e2e_7b --tiny --json /tmp/tiny.json   # small shape: a quick GPU check
Random weights, every decoder Linear pruned 2:4 by magnitude. "dense" runs cuBLAS on the pruned weights
(zeros in place), "sparse" swaps each Linear for SparseLinear with kernels on (cuSPARSELt for prefill,
the Triton decode kernel for one token). Both are captured in a CUDA graph and timed with do_bench
(median); logits are compared on the same input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks._meta import meta

from compress.kernels.graphs import capture  # noqa: E402


def prune_24(model) -> list[str]:
    from compress.model.layers import decoder_layers, target_linears
    from compress.pattern import nm_mask

    names = []
    for name, layer in decoder_layers(model):
        for linear_name, linear in target_linears(layer, name, None, None).items():
            w = linear.weight.data
            w.mul_(nm_mask(w.abs().float(), 2, 4).to(w.dtype))
            names.append(linear_name)
    return names


def to_sparse(model, names: list[str]) -> None:
    from compress.kernels.sparse_linear import SparseLinear

    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, SparseLinear.from_linear(getattr(owner, child), 2, 4))


def time_ms(graph) -> float:
    from triton.testing import do_bench

    return do_bench(graph.replay, warmup=5, rep=50, return_mode="median")


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def prefill(model, ids, forward=None) -> tuple[float, torch.Tensor]:
    forward = model if forward is None else forward
    forward(input_ids=ids, use_cache=False)  # eager warm-up first: algorithm searches, Triton compiles
    graph, logits = capture(lambda: forward(input_ids=ids, use_cache=False).logits)
    return time_ms(graph), logits.clone()


@torch.no_grad()
def decode_step(model, context: int, batch: int) -> tuple[float, torch.Tensor]:
    """One token with a static KV cache of `context` tokens, as a CUDA graph."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context + 8)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(context, device="cuda"))
    token = ids[:, -1:].clone()
    position = torch.tensor([context], device="cuda")
    counters = [layer.cumulative_length for layer in getattr(cache, "layers", []) if hasattr(layer, "cumulative_length")]

    def step():
        for counter in counters:  # the cache advances on every call; each replay decodes the same position
            counter.fill_(context)
        return model(input_ids=token, past_key_values=cache, use_cache=True, cache_position=position).logits

    graph, logits = capture(step)
    return time_ms(graph), logits.clone()


def main() -> None:
    from benchmarks.prune_7b import random_llama

    from compress.kernels.sparse_linear import use_kernels

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--decode-context", type=int, default=1024)
    parser.add_argument("--contiguous-mlp", action="store_true", help="copy gate/up outputs to row-major")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (prefill only)")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 512, 128 tokens, batch 1")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.layers, args.hidden, args.intermediate, args.seqlen, args.batch, args.decode_context = 2, 512, 1024, 128, [1], 64
    run_meta = meta()
    dtype = getattr(torch, args.dtype)
    model = random_llama(args.layers, args.hidden, args.intermediate, dtype, device="cuda")
    names = prune_24(model)
    rows, runs = [], {}
    gen = torch.Generator("cuda").manual_seed(0)
    inputs = {b: torch.randint(0, 32000, (b, args.seqlen), device="cuda", generator=gen) for b in args.batch}
    for variant in ("dense", "sparse"):
        if variant == "sparse":
            to_sparse(model, names)
            use_kernels(model, transposed_mlp=not args.contiguous_mlp)
        if args.compile:
            torch._dynamo.reset()
        forward = torch.compile(model, dynamic=False) if args.compile else None
        for b, ids in inputs.items():
            ms, logits = prefill(model, ids, forward)
            runs[(variant, "prefill", b)] = (ms, logits)
            print(variant, "prefill", b, round(ms, 3), flush=True)
        for b in [] if args.compile else args.batch:
            ms, logits = decode_step(model, args.decode_context, b)
            runs[(variant, "decode", b)] = (ms, logits)
            print(variant, "decode", b, round(ms, 3), flush=True)
        torch.cuda.empty_cache()
    for (variant, phase, b), (ms, logits) in runs.items():
        if variant != "sparse":
            continue
        dense_ms, dense_logits = runs[("dense", phase, b)]
        tokens = b * (args.seqlen if phase == "prefill" else 1)
        row = {"phase": phase, "batch": b, "tokens": tokens, "dense_ms": dense_ms, "sparse_ms": ms,
               "dense_tok_s": tokens / dense_ms * 1e3, "sparse_tok_s": tokens / ms * 1e3,
               "speedup": dense_ms / ms, "logits_rel_err": rel_err(logits, dense_logits)}
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    settings = {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate, "dtype": args.dtype,
                "seqlen": args.seqlen, "decode_context": args.decode_context, "contiguous_mlp": args.contiguous_mlp,
                "compile": args.compile, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(json.dumps(settings))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": {**run_meta, **settings}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
