"""Sparse GEMM paths vs cuBLAS dense (compress.kernels.bench), written with the run's meta block.

Usage: PYTHONPATH=. python -m benchmarks.sparse_gemm --json kernels.json [--shapes "7B gate/up" ...] [--tokens 1 16 ...]
       [--dtypes float16 bfloat16]
       PYTHONPATH=. python -m benchmarks.sparse_gemm --tiny --json /tmp/tiny.json   # one 1024x1024 shape, M = 1 and 16
Rows keep full precision (the console line is rounded, the file is not); the file is rewritten after
every row, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json

from benchmarks._meta import meta


def main() -> None:
    import torch

    from compress.kernels.bench import REPLAYS, SHAPES, bench_one

    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 256, 2048, 8192, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    shapes = {"tiny 1024x1024": (1024, 1024)} if args.tiny else {name: SHAPES[name] for name in args.shapes}
    tokens, dtypes = ([1, 16], ["float16"]) if args.tiny else (args.tokens, args.dtypes)
    result = {"meta": {**meta(), "replays_per_graph": REPLAYS}, "rows": []}
    for dtype in dtypes:
        for name, shape in shapes.items():
            for m in tokens:
                row = bench_one(name, shape, m, getattr(torch, dtype))
                result["rows"].append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
