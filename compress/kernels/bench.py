"""Time sparse GEMM paths against cuBLAS dense on the GPU: `compress bench kernels`.

Each path computes the same product as the dense `x @ Wᵀ` with W (out × in) pruned to 2:4 (or 6:8):
  dense       cuBLAS on the weight with zeros in place;
  torch-2:4   F.linear on torch's to_sparse_semi_structured weight (the easy path);
  cslt-2:4    cuSPARSELt through torch._cslt_sparse_mm with a searched algorithm, W·xᵀ (feature-major);
  slide-6:8   the 6:8 weight as 2:4 over 1.5·in (compress.kernels.slide), lifted activations + cuSPARSELt;
  gemv-2:4    (M ≤ 16) our Triton CUDA-core kernel on the compressed values + 2-bit indices;
  tc-2:4      (M ≤ 16) our Triton kernel rebuilding dense tiles in registers for the tensor cores;
  ours-2:4    SparseLinear with kernels on, as a model calls it: row-major output (for M > 1 that is
              cuSPARSELt plus a tiled transpose back to tokens × out).
Dense and cslt paths are replayed 10× inside a CUDA graph and timed with triton's do_bench (median);
inputs are random normal, never zeros. Relative error is against the dense product with zeros in place.
"""
from __future__ import annotations

import json

import torch

from compress.kernels.graphs import capture
from compress.provenance import run_meta

__all__ = ["SHAPES", "bench_kernels", "capture"]

SHAPES = {  # (out, in) of the MLP and attention Linears
    "7B gate/up": (11008, 4096), "7B down": (4096, 11008), "7B qkvo": (4096, 4096),
    "8B gate/up": (14336, 4096), "8B down": (4096, 14336),
    "70B gate/up": (28672, 8192), "70B down": (8192, 28672),
}
REPLAYS = 10


def _time_ms(fn, graphed: bool) -> float:
    from triton.testing import do_bench

    if graphed:
        graph, _ = capture(fn, REPLAYS)
        return do_bench(graph.replay, warmup=25, rep=100, return_mode="median") / REPLAYS
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def _nm_weight(out_features: int, in_features: int, n: int, m: int, dtype) -> torch.Tensor:
    from compress.pattern import nm_mask

    w = torch.randn(out_features, in_features, device="cuda", dtype=torch.float32) * 0.02
    return (w * nm_mask(torch.rand_like(w), n, m)).to(dtype)


def _cslt(weight: torch.Tensor, x: torch.Tensor):
    compressed = torch._cslt_compress(weight)
    alg = torch._cslt_sparse_mm_search(compressed, x.t())
    return lambda: torch._cslt_sparse_mm(compressed, x.t(), alg_id=alg)


def _ours(row: dict, w24: torch.Tensor, x: torch.Tensor, ref: torch.Tensor) -> None:
    from compress.kernels import decode
    from compress.kernels.nm_format import pack_nm
    from compress.kernels.sparse_linear import SparseLinear, use_kernels

    values, mask = pack_nm(w24, 2, 4)
    in_features = w24.shape[1]
    calls = {}
    if x.shape[0] <= 16:
        nibbles = decode.nibbles_24(mask, in_features)
        calls["gemv24"] = lambda: decode.nm24_gemv(x, values, nibbles, in_features)
        calls["tc24"] = lambda: decode.nm24_mm(x, values, nibbles, in_features)
    module = SparseLinear(values, mask, in_features, 2, 4)
    use_kernels(torch.nn.Sequential(module))
    calls["ours24"] = lambda: module(x)
    for label, call in calls.items():
        try:
            row[f"{label}_rel_err"] = _rel_err(call(), ref)
            row[f"{label}_ms"] = _time_ms(call, graphed=True)
        except Exception as exc:
            row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"


def bench_one(name: str, shape: tuple[int, int], tokens: int, dtype) -> dict:
    from torch.sparse import to_sparse_semi_structured

    from compress.kernels.slide import lift_index, slide_expand

    out_features, in_features = shape
    torch.manual_seed(0)
    x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
    row = {"shape": name, "out": out_features, "in": in_features, "M": tokens, "dtype": str(dtype).split(".")[-1]}
    w24 = _nm_weight(out_features, in_features, 2, 4, dtype)
    ref = x @ w24.t()
    row["dense_ms"] = _time_ms(lambda: x @ w24.t(), graphed=True)
    try:
        sparse = to_sparse_semi_structured(w24)
        row["torch24_rel_err"] = _rel_err(torch.nn.functional.linear(x, sparse), ref)
        row["torch24_ms"] = _time_ms(lambda: torch.nn.functional.linear(x, sparse), graphed=False)
    except Exception as exc:  # records why the easy path is unavailable for this shape
        row["torch24_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
    try:
        call = _cslt(w24, x)
        row["cslt24_rel_err"] = _rel_err(call().t(), ref)
        row["cslt24_ms"] = _time_ms(call, graphed=True)
    except Exception as exc:
        row["cslt24_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
    _ours(row, w24, x, ref)
    w68 = _nm_weight(out_features, in_features, 6, 8, dtype)
    ref68 = x @ w68.t()
    row["dense68_ms"] = _time_ms(lambda: x @ w68.t(), graphed=True)
    try:
        index = lift_index(in_features, 8, x.device)
        lifted = x.index_select(1, index)
        mm = _cslt(slide_expand(w68, 8), lifted)
        row["slide68_rel_err"] = _rel_err(mm().t(), ref68)
        row["slide68_mm_ms"] = _time_ms(mm, graphed=True)

        def lift_and_mm():
            torch.index_select(x, 1, index, out=lifted)
            return mm()

        row["slide68_ms"] = _time_ms(lift_and_mm, graphed=True)
    except Exception as exc:
        row["slide68_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
    for key, dense_key in (("torch24_ms", "dense_ms"), ("cslt24_ms", "dense_ms"), ("slide68_ms", "dense68_ms"),
                           ("slide68_mm_ms", "dense68_ms"), ("gemv24_ms", "dense_ms"), ("tc24_ms", "dense_ms"),
                           ("ours24_ms", "dense_ms")):
        if key in row:
            row[key.replace("_ms", "_speedup")] = row[dense_key] / row[key]
    return row


def bench_kernels(shapes: list[str], tokens: list[int], dtypes: list[str], on_row=None,
                  command: str = "compress bench kernels") -> dict:
    """Every shape x token count x dtype; `command` is recorded in the result's meta."""
    if not torch.cuda.is_available():
        from compress.errors import BadInput

        raise BadInput("compress bench kernels needs a CUDA GPU")
    meta = {**run_meta(command), "replays_per_graph": REPLAYS}
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for name in shapes:
            for m in tokens:
                rows.append(bench_one(name, SHAPES[name], m, dtype))
                if on_row:
                    on_row(rows[-1])
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 256, 2048, 8192, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = bench_kernels(args.shapes, args.tokens, args.dtypes, on_row=lambda r: print(json.dumps(
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
