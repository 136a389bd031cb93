"""`compress bench kernels` (sparse GEMM paths against cuBLAS) and `compress bench attention` (Double Sparsity decode against SDPA), on a GPU."""
from __future__ import annotations

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
        from compress.export.outputs import check_report_file, write_report_file
        from compress.kernels.bench import SHAPES, bench_kernels

        path = check_report_file(json_out, key="json") if json_out else None
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
        if path:
            write_report_file(path, result)


def _kernel_row(row: dict) -> str:
    def speed(key):
        return f"{row[key]:.2f}x" if key in row else "n/a"

    return (f"{row['dtype']:>8} {row['shape']:<12} M={row['M']:<6} dense {row['dense_ms']:.4f} ms  "
            f"torch2:4 {speed('torch24_speedup')}  cslt2:4 {speed('cslt24_speedup')}  6:8 slide {speed('slide68_speedup')}")


@bench_app.command("attention")
def bench_attention_command(
    contexts: Optional[List[int]] = typer.Option(None, "--context", help="Cached tokens (default 4096 16384 65536 131072)."),
    batches: Optional[List[int]] = typer.Option(None, "--batch", help="Sequences decoded at once (default 1 16)."),
    shapes: Optional[List[str]] = typer.Option(None, "--shape", help="mha-32x128 and/or gqa-32/8x128 (default both)."),
    dtypes: Optional[List[str]] = typer.Option(None, "--dtype", help="float16 and/or bfloat16 (default float16)."),
    fraction: int = typer.Option(16, help="Keep 1/FRACTION of the channels (labels) and of the context (tokens)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write all rows to this JSON file."),
) -> None:
    """Double Sparsity decode (label scoring + top-T + sparse attention, one CUDA graph) vs dense SDPA (needs CUDA)."""
    with exit_codes():
        import torch

        from compress.errors import BadInput
        from compress.export.outputs import check_report_file, write_report_file

        path = check_report_file(json_out, key="json") if json_out else None
        if not torch.cuda.is_available():
            raise BadInput("compress bench attention needs a CUDA GPU")
        from compress.attention.decode_kernels.bench import SHAPES, bench_attention

        unknown = [s for s in shapes or [] if s not in SHAPES]
        if unknown:
            raise BadInput(f"unknown shape {unknown[0]!r}: choose from {', '.join(SHAPES)}")
        if any(c < fraction for c in contexts or []) or any(b < 1 for b in batches or []) or fraction < 1:
            raise BadInput("--context must be at least --fraction, --batch and --fraction at least 1")
        bad = [d for d in dtypes or [] if d not in ("float16", "bfloat16")]
        if bad:
            raise BadInput(f"unknown --dtype {bad[0]!r}: choose float16 or bfloat16")
        rows = bench_attention(contexts or [4096, 16384, 65536, 131072], batches or [1, 16], shapes or list(SHAPES),
                               dtypes or ["float16"], fraction, on_row=lambda row: out.print(_attention_row(row)))
        if path:
            write_report_file(path, {"rows": rows})


def _attention_row(row: dict) -> str:
    return (f"{row['dtype']:>8} {row['shape']:<13} B={row['batch']:<3} context={row['context']:<7} "
            f"dense {row['dense_ms']:.4f} ms  sparse {row['sparse_ms']:.4f} ms  {row['speedup']:.2f}x "
            f"(bytes limit {row['bytes_limit_speedup']:.2f}x)")
