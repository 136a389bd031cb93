"""BENCHMARKS.md's Double Sparsity tables and figures, from benchmarks/results/attention-*.json (see render.py)."""
from __future__ import annotations

from figures import FIGURES, figure, load, pct, table, verdict

KERNELS = "attention-kernels-h200"


@figure("attention-kernels")
def attention_kernels() -> str:
    body = [[r["shape"], r["dtype"], r["batch"], r["context"], f"{r['dense_ms']:.4f}", f"{r['sparse_ms']:.4f}",
             f"{r['score_ms']:.4f} / {r['select_ms']:.4f} / {r['attend_ms']:.4f}", f"**{r['speedup']:.2f}x**",
             f"{r['dense_ms'] / r['sparse_topk_ms']:.2f}x / {r['dense_ms'] / r['sparse_radix_ms']:.2f}x",
             f"{r['bytes_limit_speedup']:.2f}x", pct(r["share_of_limit"]),
             f"{r['dense_tb_per_s']:.2f}"]
            for r in load(KERNELS)["rows"]]
    return table(["shape", "dtype", "batch", "context", "dense SDPA ms", "Double Sparsity ms",
                  "score / select / attend ms (each alone)", "speedup", "speedup: float32 scores / radix select",
                  "bytes-read limit", "share of limit", "dense TB/s"], body)


def _target_rows() -> list[dict]:
    return [r for r in load(KERNELS)["rows"] if r["batch"] == 16 and r["context"] == 65536 and r["dtype"] == "float16"]


FIGURES["attention.kernel-target"] = lambda: verdict([r["speedup"] for r in _target_rows()], 8.0)
FIGURES["attention.kernel-target-speedups"] = lambda: ", ".join(f"{r['shape']} {r['speedup']:.2f}x" for r in _target_rows())
FIGURES["attention.kernel-checks"] = lambda: (
    f"{sum(c['selected_within_tolerance'] and c['finite'] for c in load(KERNELS)['checks'])} of "
    f"{len(load(KERNELS)['checks'])} checks, largest output error "
    f"{max(c['output_error'] for c in load(KERNELS)['checks']):.1e}")

