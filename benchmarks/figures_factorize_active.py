"""BENCHMARKS.md's GPU rows for `compress factorize --active` (the shared + routed FFN), from
benchmarks/results/factorize-active-gpu-*.json and factorize-launch-*.json (see render.py)."""
from __future__ import annotations

from benchmarks.figures import FIGURES, figure, load, table

ACTIVE = "factorize-active-gpu-h100"
LAUNCH = "factorize-launch-h100"
BARS = {(1, 1): ("≥ 2×", 2.0), (8, 2048): ("≥ 3×", 3.0), (16, 1): ("≥ 0.9×", 0.9), (1, 256): ("≥ 0.9×", 0.9)}


@figure("factorize-active-gpu")
def ffn_table() -> str:
    body = []
    for row in load(ACTIVE)["rows"]:
        bar = BARS.get((row["batch"], row["tokens"])) if row["active"] == 0.25 else None
        verdict = "—" if bar is None else f"{bar[0]}: {'**met**' if row['speedup'] >= bar[1] else '**missed**'}"
        body.append([f"{100 * row['active']:.0f}%", f"S{row['shared']} + {row['top_k']} of {row['experts']}",
                     f"{row['batch']}×{row['tokens']}", row["path"], f"{row['dense_ms']:.3f}", f"{row['moe_ms']:.3f}",
                     f"**{row['speedup']:.2f}×**", f"{row['busiest_over_fair']:.2f}×", verdict])
    return table(["active", "groups", "batch×tokens", "path", "dense ms", "factorized ms", "speedup",
                  "busiest expert over fair", "issue's bar (25%)"], body)


@figure("factorize-active-gpu.e2e")
def e2e_table() -> str:
    body = [[row["phase"], row["batch"], row["context"] or "—", f"{row['dense_tok_s']:,.0f}",
             f"{row['factorized_tok_s']:,.0f}", f"**{row['speedup']:.2f}×**"] for row in load(ACTIVE)["end_to_end"]]
    return table(["phase", "batch", "KV cache tokens", "dense tokens/s", "factorized tokens/s", "speedup"], body)


@figure("factorize-launch")
def launch_table() -> str:
    body = []
    for row in load(LAUNCH)["span"]:
        paths = {"grouped matmuls + shared": row["grouped_ms"]}
        for key in ("decode 16 settings ms", "blocked 256 settings ms", "blocked 16384 settings ms"):
            if isinstance(row.get(key), float):
                paths[key.replace(" settings ms", "").replace("decode 16", "decode kernels").replace(
                    "blocked ", "blocked kernels, settings of ")] = row[key]
        best = min(paths, key=paths.get)
        cells = [f"{paths[name]:.3f}" if name in paths else "—" for name in
                 ("decode kernels", "blocked kernels, settings of 256", "blocked kernels, settings of 16384",
                  "grouped matmuls + shared")]
        body.append([row["tokens"], f"{row['dense_ms']:.3f}"] + cells + [best, f"{row['dense_ms'] / paths[best]:.2f}×"])
    return table(["tokens", "dense ms", "decode kernels ms", "blocked (256's settings) ms", "blocked (16384's settings) ms",
                  "grouped matmuls ms", "fastest", "fastest vs dense"], body)


FIGURES["factorize-active-gpu.checks"] = lambda: (
    f"{len(load(ACTIVE)['checks'])} checks, largest relative error "
    f"{max(c['relative_error'] for c in load(ACTIVE)['checks']):.4f} (bound 1e-2, the tests' rule)")
FIGURES["factorize-launch.best"] = lambda: "; ".join(
    f"{name}: " + ", ".join(f"{k} {v}" for k, v in entry["launch"].items()) for name, entry in load(LAUNCH)["best"].items())
