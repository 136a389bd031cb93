"""Double Sparsity decode kernels on a GPU: correctness against the PyTorch reference, then label scoring +
top-T selection + sparse attention (one CUDA graph) against dense SDPA decode attention, 1/16 of the channels
and of the context. Each check draws fresh random inputs; timing rows report the bytes-read limit.
Usage: python -m benchmarks.attention_kernels --json benchmarks/results/attention-kernels-h200.json
       python -m benchmarks.attention_kernels --tiny --json /tmp/tiny.json   # a quick check (GPU)
       --tune: also time each kernel over a grid of launch settings at batch 16, 64K (key "tuning")
"""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks._meta import meta


PATHS = ((16, "topk-half"), (16, "topk"), (16, "threshold"), (4, "threshold"), (4, "topk-half"))  # bits, selection


def main() -> None:
    from compress.attention.decode_kernels.bench import (SHAPES, bench_attention, check_decode, check_failures,
                                                         tune_decode)

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--contexts", type=int, nargs="*", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--dtypes", nargs="*", default=["float16", "bfloat16"],
                        help="checks in each; timing: the first over the grid, the others at 64K, batch 16")
    parser.add_argument("--check-batches", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--channels", type=int, default=16,
                        help="labels of head_dim/N channels (8: the default setting's rank, 1/8 of a head)")
    args = parser.parse_args()
    if args.tiny:
        args.contexts, args.batches, args.dtypes = [4096], [1], ["float16"]
    run_meta = meta()
    checks = []
    seed = 0
    for dtype in args.dtypes:
        for name, (heads, kv_heads, head_dim) in SHAPES.items():
            for batch in ([1] if args.tiny else args.check_batches):
                for context, budget in ((777, 48), (4129, 4129 // 16), (300, 512)):
                    for bits, selection in PATHS:
                        seed += 1
                        row = {"shape": name, **check_decode(batch, heads, kv_heads, context, head_dim,
                                                             head_dim // args.channels, budget, getattr(torch, dtype), seed,
                                                             selection=selection, label_bits=bits)}
                        row["failed"] = check_failures(row)
                        checks.append(row)
                        print(json.dumps(row), flush=True)
    show = lambda row: print(json.dumps(row), flush=True)  # noqa: E731
    tuning = []
    if args.tune:
        for heads, kv_heads, head_dim in SHAPES.values():
            tuning += tune_decode(16, heads, kv_heads, 65536, head_dim, head_dim // args.channels, 65536 // 16, torch.float16)
        for row in tuning:
            show(row)
    rows = bench_attention(args.contexts, args.batches, list(SHAPES), args.dtypes[:1], on_row=show,
                           channel_fraction=args.channels)
    if not args.tiny:
        rows += bench_attention([65536], [16], list(SHAPES), args.dtypes[1:], on_row=show,
                                channel_fraction=args.channels)
    result = {"meta": run_meta, "device": torch.cuda.get_device_name(), "checks": checks, "rows": rows,
              **({"tuning": tuning} if tuning else {})}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{'shape':<13}{'dtype':<9}{'B':>3}{'context':>8}{'dense':>9}{'sparse':>9}{'score':>8}{'select':>8}"
          f"{'attend':>8}{'thr16':>8}{'topkh4':>8}{'topkh16':>8}{'topk32':>8}{'speedup':>8}{'limit':>7}{'share':>6}")
    for r in rows:
        print(f"{r['shape']:<13}{r['dtype']:<9}{r['batch']:>3}{r['context']:>8}{r['dense_ms']:>9.4f}{r['sparse_ms']:>9.4f}"
              f"{r['score_ms']:>8.4f}{r['select_ms']:>8.4f}{r['attend_ms']:>8.4f}{r['sparse_threshold_16bit_ms']:>8.4f}"
              f"{r['sparse_topk_half_4bit_ms']:>8.4f}{r['sparse_topk_half_ms']:>8.4f}{r['sparse_topk_ms']:>8.4f}"
              f"{r['speedup']:>8.2f}{r['bytes_limit_speedup']:>7.2f}{r['share_of_limit']:>6.2f}")
    best = {}
    for row in tuning:
        key = (row["heads"], row["kv_heads"], row["kernel"])
        best[key] = min(best.get(key, row), row, key=lambda r: r["ms"])
    for row in best.values():
        print("fastest", json.dumps(row))
    bad = [c for c in checks if c["failed"]]
    print(f"checks: {len(checks) - len(bad)} of {len(checks)} passed (the GPU tests' rules, bench.check_failures)")


if __name__ == "__main__":
    main()
