"""cuSPARSELt writing row-major output itself (transpose_result=True) vs its plain feature-major product.

Usage: PYTHONPATH=. python -m benchmarks.cslt_transposed --json cslt-transposed.json
       [--shapes 11008x4096 4096x11008 4096x4096] [--tokens 2048]      (OUTxIN, float16 2:4)
       PYTHONPATH=. python -m benchmarks.cslt_transposed --tiny --json /tmp/tiny.json   # one small shape
Speedups over cuBLAS dense, same method as `compress bench kernels` (CUDA graph, 10 replays, median of
do_bench), and whether cuSPARSELt's algorithm search works for the transposed layout. Each shape runs in
its own child process: a failed search can leave the CUDA context unusable.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks._meta import meta


def one(out_features: int, in_features: int, tokens: int) -> dict:
    import torch

    from compress.kernels.bench import _nm_weight, _time_ms

    weight = _nm_weight(out_features, in_features, 2, 4, torch.float16)
    x = torch.randn(tokens, in_features, device="cuda", dtype=torch.float16)
    ref = x @ weight.t()
    compressed = torch._cslt_compress(weight)
    dense = _time_ms(lambda: x @ weight.t(), True)
    searched = torch._cslt_sparse_mm_search(compressed, x.t())
    plain = _time_ms(lambda: torch._cslt_sparse_mm(compressed, x.t(), alg_id=searched), True)
    row = {"out": out_features, "in": in_features, "M": tokens, "dtype": "float16", "dense_ms": dense,
           "plain_speedup": dense / plain}
    for label, alg in (("default_alg", 0), ("plain_alg", searched)):
        call = lambda: torch._cslt_sparse_mm(compressed, x.t(), alg_id=alg, transpose_result=True)  # noqa: E731
        row[f"transposed_{label}_rel_err"] = float((call().float() - ref.float()).norm() / ref.float().norm())
        row[f"transposed_{label}_speedup"] = dense / _time_ms(call, True)
    try:
        row["transposed_search"] = str(torch._C._cusparselt.mm_search(compressed, x.t(), None, None, None, True))
    except RuntimeError as exc:
        row["transposed_search"] = f"failed: {str(exc)[:120]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["11008x4096", "4096x11008", "4096x4096"])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--tiny", action="store_true", help="one 1024x1024 shape, 256 tokens")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: OUTxIN
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*(int(v) for v in args.one.split("x")), args.tokens)), flush=True)
        return
    if args.tiny:
        args.shapes, args.tokens = ["1024x1024"], 256
    result = {"meta": meta(), "rows": []}
    for shape in args.shapes:
        child = subprocess.run([sys.executable, __file__, "--one", shape, "--tokens", str(args.tokens)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            row = {"shape": shape, "M": args.tokens, "error": (child.stderr.strip().splitlines() or ["?"])[-1][:200]}
        else:
            row = json.loads(child.stdout.strip().splitlines()[-1])
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
