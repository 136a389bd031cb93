"""cuSPARSELt writing row-major output itself (transpose_result=True) vs its plain feature-major product.

Usage: PYTHONPATH=. python benchmarks/cslt_transposed.py OUT IN TOKENS   (one shape per process: a failed
algorithm search can leave the CUDA context unusable). Prints speedups over cuBLAS dense, same method as
`compress bench kernels` (CUDA graph, 10 replays, median of do_bench), and whether the search for the
transposed layout works.
"""
import sys

import torch

from compress.kernels.bench import _nm_weight, _time_ms


def main() -> None:
    out_features, in_features, tokens = (int(v) for v in sys.argv[1:4])
    weight = _nm_weight(out_features, in_features, 2, 4, torch.float16)
    x = torch.randn(tokens, in_features, device="cuda", dtype=torch.float16)
    ref = x @ weight.t()
    compressed = torch._cslt_compress(weight)
    dense = _time_ms(lambda: x @ weight.t(), True)
    searched = torch._cslt_sparse_mm_search(compressed, x.t())
    plain = _time_ms(lambda: torch._cslt_sparse_mm(compressed, x.t(), alg_id=searched), True)
    print(f"{out_features}x{in_features} M={tokens}: plain (feature-major) {dense / plain:.3f}x", flush=True)
    for label, alg in (("default algorithm", 0), ("plain layout's searched algorithm", searched)):
        call = lambda: torch._cslt_sparse_mm(compressed, x.t(), alg_id=alg, transpose_result=True)  # noqa: E731
        err = float((call().float() - ref.float()).norm() / ref.float().norm())
        print(f"  transpose_result, {label}: {dense / _time_ms(call, True):.3f}x (rel. err {err:.1e})", flush=True)
    try:
        alg = torch._C._cusparselt.mm_search(compressed, x.t(), None, None, None, True)
        print("  search for transpose_result:", alg, flush=True)
    except RuntimeError as exc:
        print("  search for transpose_result failed:", str(exc)[:120], flush=True)


if __name__ == "__main__":
    main()
