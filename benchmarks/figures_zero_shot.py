"""BENCHMARKS.md's zero-shot table and figures, from benchmarks/results/zero-shot.json (see render.py)."""
from __future__ import annotations

from benchmarks.figures import FIGURES, figure, load, pct, table

STEM = "zero-shot"


def _score(value: float, error: float) -> str:
    return f"{100 * value:.1f}% ± {100 * error:.1f}"


def _above_chance(row: dict) -> str:
    """How many of its standard errors acc stands above chance."""
    return f"{(row['acc'] - load(STEM)['chance']) / row['acc_stderr']:.1f}"


@figure("zero-shot")
def zero_shot() -> str:
    body = [[r["model"], pct(r["sparsity"]), f"**{_score(r['acc'], r['acc_stderr'])}**",
             _score(r["acc_norm"], r["acc_norm_stderr"]), _above_chance(r),
             "—" if r["prune_s"] is None else f"{r['prune_s']:.0f}", f"{r['seconds']:.0f}"]
            for r in load(STEM)["rows"]]
    return table(["model", "sparsity of the pruned Linears", "acc ± stderr", "acc_norm ± stderr",
                  "acc above chance, in standard errors", "prune seconds", "zero-shot seconds"], body)


def _row(model: str) -> dict:
    return next(r for r in load(STEM)["rows"] if r["model"] == model)


FIGURES["zero-shot.chance"] = lambda: pct(load(STEM)["chance"])
FIGURES["zero-shot.items"] = lambda: str(load(STEM)["items"])
FIGURES["zero-shot.calibration"] = lambda: load(STEM)["calibration"]
FIGURES["zero-shot.lm-eval"] = lambda: load(STEM)["lm_eval_version"]
FIGURES["zero-shot.dense"] = lambda: _score(_row("dense")["acc"], _row("dense")["acc_stderr"])
FIGURES["zero-shot.dense-above-chance"] = lambda: _above_chance(_row("dense"))


def _drop(model: str) -> str:
    """acc lost against dense, in points (percent of items)."""
    return f"{100 * (_row('dense')['acc'] - _row(model)['acc']):.1f} points"


FIGURES["zero-shot.drop-wanda"] = lambda: _drop("wanda 2:4")
FIGURES["zero-shot.drop-sparsegpt"] = lambda: _drop("sparsegpt 2:4")
