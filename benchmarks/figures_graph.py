"""BENCHMARKS.md's graph-transformer (GTSP) tables and figures, from benchmarks/results/graph-*.json (see render.py)."""
from __future__ import annotations

import statistics

from benchmarks.figures import FIGURES, RESULTS, figure, load, table

STEM = "graph-b3db"
CONFIG_ORDER = ["reference", "tokens 0.5", "heads 0.5", "layers 0.25", "weights 0.5", "combined", "combined + fine-tune"]
TARGET_CUT, TARGET_LOW = 0.40, -1.0  # the bar: ≥ 40% structural FLOPs cut, interval low end above −1 point
# Published, for context only (other splits and features): GMC-MPNN, arXiv 2507.18926 v5 abstract, scaffold splits.
PUBLISHED = "GMC-MPNN (arXiv 2507.18926, v5 abstract) reports AUC-ROC 0.947 and 0.921 on two BBBP classification sets"


def _rows(config: str, random: bool) -> list[dict]:
    return [r for r in load(STEM)["rows"] if r["config"] == config and r["random"] == random]


def _interval(config: str, random: bool) -> dict:
    return next(i for i in load(STEM)["intervals"] if i["config"] == config and i["random"] == random)


def _mean_sd(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def _delta(config: str, random: bool) -> float:
    refs = {r["model_seed"]: r["auc"] for r in _rows("reference", False)}
    return 100 * statistics.mean(r["auc"] - refs[r["model_seed"]] for r in _rows(config, random))


@figure("graph-b3db")
def graph_b3db() -> str:
    body = []
    for config in CONFIG_ORDER:
        for random in ((False,) if config == "reference" else (False, True)):
            rows = _rows(config, random)
            ci = "—" if config == "reference" else "{delta_auc_low:+.2f} … {delta_auc_high:+.2f}".format(
                **_interval(config, random))
            delta = "—" if config == "reference" else f"{_delta(config, random):+.2f}"
            body.append([config, "random" if random else ("importance" if config != "reference" else "—"),
                         _mean_sd(r["auc"] for r in rows), delta, ci,
                         f"{100 * statistics.mean(r['structural_cut'] for r in rows):.1f}%",
                         f"{100 * statistics.mean(r['nonzero_cut'] for r in rows):.1f}%",
                         f"{statistics.mean(r['external_auc'] for r in rows):.3f}"])
    return table(["pruned", "chosen by", "ROC-AUC (test, mean ± sd over models)", "ΔAUC (points)",
                  "paired-bootstrap 95% interval of ΔAUC", "structural FLOPs cut", "nonzero-weight FLOPs cut",
                  "external-set ROC-AUC"], body)


@figure("graph-b3db-cpu")
def graph_b3db_cpu() -> str:
    timed = [r for r in load(STEM)["rows"] if r.get("cpu_seconds") is not None]
    ref = next(r["cpu_seconds"] for r in timed if r["config"] == "reference")
    return table(["model (seed 0)", "CPU seconds over the test split", "vs reference"],
                 [[r["config"], f"{r['cpu_seconds']:.2f}", f"{ref / r['cpu_seconds']:.2f}x"] for r in timed])


def _verdict() -> str:
    cut = statistics.mean(r["structural_cut"] for r in _rows("combined + fine-tune", False))
    low = _interval("combined + fine-tune", False)["delta_auc_low"]
    met = cut >= TARGET_CUT and low > TARGET_LOW
    return (f"{'**met**' if met else '**missed**'}: {100 * cut:.1f}% structural FLOPs cut, interval low end "
            f"{low:+.2f} points")


FIGURES["graph.models"] = lambda: str(load(STEM)["models"])
FIGURES["graph.epochs"] = lambda: str(load(STEM)["epochs"])
FIGURES["graph.shape"] = lambda: "{channels} channels, {layers} layers, {heads} heads".format(**load(STEM))
FIGURES["graph.reference_auc"] = lambda: _mean_sd(r["auc"] for r in _rows("reference", False))
FIGURES["graph.verdict"] = _verdict
FIGURES["graph.published"] = lambda: PUBLISHED

if (RESULTS / "graph-gpu-h200.json").is_file():
    @figure("graph-gpu-h200")
    def graph_gpu() -> str:
        rows = load("graph-gpu-h200")["rows"]
        ref = {r["batch"]: r["ms"] for r in rows if r["model"] == "reference"}
        return table(["model", "graphs per batch", "ms over the test split", "vs reference"],
                     [[r["model"], r["batch"], f"{r['ms']:.2f}", f"{ref[r['batch']] / r['ms']:.2f}x"] for r in rows])
