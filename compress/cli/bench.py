"""`compress bench kernels`: sparse GEMM paths against cuBLAS on a GPU."""
from __future__ import annotations

import json
import shlex
import sys
from typing import List, Optional

import typer

from compress.cli.common import exit_codes, out

__all__ = ["bench_app"]

bench_app = typer.Typer(help="Measurements on the GPU.", no_args_is_help=True)


@bench_app.command("kernels")
def bench_kernels_command(
    shapes: Optional[List[str]] = typer.Option(None, "--shape", help="Shape names (default: all Llama 7B/8B/70B shapes)."),
    tokens: Optional[List[int]] = typer.Option(None, "--tokens", help="Token counts M (default 1 16 256 2048 8192 16384)."),
    dtypes: Optional[List[str]] = typer.Option(None, "--dtype", help="float16 and/or bfloat16 (default both)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write all rows to this JSON file."),
) -> None:
    """Time cuBLAS dense vs torch 2:4 vs cuSPARSELt 2:4 vs 6:8 slide on random N:M weights (needs CUDA)."""
    with exit_codes():
        from compress.errors import BadInput
        from compress.kernels.bench import SHAPES, bench_kernels

        unknown = [s for s in shapes or [] if s not in SHAPES]
        if unknown:
            raise BadInput(f"unknown shape {unknown[0]!r}: choose from {', '.join(SHAPES)}")
        if any(t < 1 for t in tokens or []):
            raise BadInput("--tokens must be at least 1")
        bad = [d for d in dtypes or [] if d not in ("float16", "bfloat16")]
        if bad:
            raise BadInput(f"unknown --dtype {bad[0]!r}: choose float16 or bfloat16")
        result = bench_kernels(shapes or list(SHAPES), tokens or [1, 16, 256, 2048, 8192, 16384],
                               dtypes or ["float16", "bfloat16"], on_row=lambda row: out.print(_kernel_row(row)),
                               command=shlex.join(["compress", *sys.argv[1:]]))
        if json_out:
            with open(json_out, "w") as f:
                json.dump(result, f, indent=2)


def _kernel_row(row: dict) -> str:
    def speed(key):
        return f"{row[key]:.2f}x" if key in row else "n/a"

    return (f"{row['dtype']:>8} {row['shape']:<12} M={row['M']:<6} dense {row['dense_ms']:.4f} ms  "
            f"torch2:4 {speed('torch24_speedup')}  cslt2:4 {speed('cslt24_speedup')}  6:8 slide {speed('slide68_speedup')}")
