"""BENCHMARKS.md's channel-permutation tables and figures, from benchmarks/results/perm*.json (see render.py)."""
from __future__ import annotations

import math
import statistics

from benchmarks.figures import FIGURES, RESULTS, f2, figure, load, pct, rows, table

NAMES = {"wanda": "Wanda", "ria": "RIA", "sparsegpt": "SparseGPT"}
GLOBAL_STEMS = ("permutations-global-wanda24", "permutations-global-sparsegpt24", "permutations-global-wanda68")
BAR, FLOOR = 0.25, 0.10  # the share of the heuristic's remaining gap to remove, and what the interval must exclude


def _stems() -> list[str]:
    return [s for s in GLOBAL_STEMS if (RESULTS / f"{s}.json").exists()]


def removed(heuristic: float, learned: float, dense: float) -> float:
    """Share of the heuristic's remaining gap to dense that `learned` removes."""
    return (heuristic - learned) / (heuristic - dense)


def paired(stem: str) -> list[tuple[dict, dict]]:
    """(heuristic row, global row) per calibration draw, in draw order."""
    heur = {r["calib_seed"]: r for r in rows(stem, permute="heuristic")}
    return [(heur[r["calib_seed"]], r) for r in rows(stem, permute="global") if r["calib_seed"] in heur]


def interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the Student-t interval of the mean."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _shares(stem: str) -> list[float]:
    dense = load(stem)["dense_ppl"]
    return [removed(h["ppl"], g["ppl"], dense) for h, g in paired(stem)]


def _verdict(stem: str) -> str:
    mean, low, _ = interval(_shares(stem))
    enough = len(_shares(stem)) >= 10
    met = mean >= BAR and low > FLOOR and enough
    count = len(_shares(stem))
    why = "" if enough else f", only {count} draw{'s' if count > 1 else ''} of the 10 asked"
    return f"**{'met' if met else 'missed'}**{why}"


@figure("perm-global")
def perm_global() -> str:
    body = []
    for stem in _stems():
        first = rows(stem)[0]
        pairs, shares = paired(stem), _shares(stem)
        mean, low, high = interval(shares)
        seconds = statistics.median(g["model_pass"]["seconds"] for _, g in pairs)
        body.append([first["pattern"], NAMES[first["method"]], len(pairs), f2(load(stem)["dense_ppl"]),
                     f2(statistics.fmean(h["ppl"] for h, _ in pairs)), f2(statistics.fmean(g["ppl"] for _, g in pairs)),
                     f"**{pct(mean)}** ({pct(low)} to {pct(high)})" if len(pairs) > 1 else pct(mean),
                     f"{sum(g['ppl'] < h['ppl'] for h, g in pairs)} of {len(pairs)}", _verdict(stem), f"{seconds:.0f}"])
    return table(["pattern", "method", "draws", "dense", "heuristic (mean)", "global (mean)",
                  "heuristic's remaining gap removed: mean (95% interval)", "global below heuristic",
                  "bar ≥ 25%, interval above 10%", "model pass s (median)"], body)


@figure("perm-global-draws")
def perm_global_draws() -> str:
    body = []
    for stem in _stems():
        dense = load(stem)["dense_ppl"]
        for h, g in paired(stem):
            run = g["model_pass"]
            body.append([f"{NAMES[g['method']]} {g['pattern']}", g["calib_seed"], f2(h["ppl"]), f2(g["ppl"]),
                         pct(removed(h["ppl"], g["ppl"], dense)),
                         f"{run['objective_start']:.4f} → {run['objective_learned']:.4f} ({run['kept']}"
                         + (f", {run['learned_weights']})" if run["kept"] == "learned" and "learned_weights" in run
                            else ")"),
                         f"{run['channels_moved']}", f"{h['prune_s']:.0f} + {run['seconds']:.0f}"])
    return table(["pruning", "draw", "heuristic", "global", "gap removed",
                  "objective (1 − cos), start → learned (kept)", "channels moved",
                  "seconds: sequential pass + model pass"], body)


FIGURES["perm.bar"] = lambda: (f"remove ≥ {pct(BAR)} of the heuristic's remaining gap on average over ≥ 10 paired "
                               f"draws, with a 95% interval (Student t over the draws) above {pct(FLOOR)}")
FIGURES["ft.summary"] = lambda: (lambda r: "{} of {} layers, up to {} (layer 15: {})".format(
    sum(x["first_token_share"] > 0.5 for x in r), len(r), pct(max(x["first_token_share"] for x in r)),
    pct(r[15]["first_token_share"])))(rows("first-token"))


# ---------------------------------------------------------------- 7B-shape timing


def _perm7b(stem: str, labels: dict, memory: bool) -> str:
    body = []
    for r in rows(stem):
        minutes = r["median_layer_s"] * 32 / 60
        if "model_pass" in r:  # the model pass's steps cost about the same per layer: scale it with the layers
            minutes += r["model_pass"]["seconds"] * 32 / r["layers"] / 60
        projected = f"about {minutes:.1f} min"
        if r["permute"] != "heuristic":
            projected += f" (target ≤ 15 min: {'met' if minutes <= 15 else 'missed'}"
            projected += " by time; memory: see below)" if "model_pass" in r else ")"
        label = labels.get(r["permute"], r["permute"])
        body.append(([NAMES[r["method"]]] if len({x["method"] for x in rows(stem)}) > 1 else [])
                    + [label, f"{r['median_layer_s']:.2f} s"]
                    + ([f"{r['model_pass']['seconds']:.1f} s" if "model_pass" in r else "—"]
                       if any("model_pass" in x for x in rows(stem)) else [])
                    + [f"{r['wall_s']:.1f} s", projected] + ([f"{r['peak_gpu_gib']:.1f} GiB"] if memory else []))
    layers, many = rows(stem)[0]["layers"], len({x["method"] for x in rows(stem)}) > 1
    return table((["method"] if many else []) + ["permute", "per layer (median)"]
                 + (["model pass"] if any("model_pass" in x for x in rows(stem)) else [])
                 + [f"whole prune, {layers} layers", "scaled to 32 layers"]
                 + (["peak GPU memory"] if memory else []), body)


FIGURES["perm7b-swap"] = lambda: _perm7b("perm7b-swap-h200", {"learned": "learned (swap search + layer-error check)"}, True)
FIGURES["perm.global_7b_peak"] = lambda: "{:.1f} GiB (heuristic {:.1f} GiB)".format(
    *(next(r["peak_gpu_gib"] for r in rows("perm7b-global-h100") if r["permute"] == k) for k in ("global", "heuristic")))


def _perm7b_whole(stem: str) -> str:
    """A whole-depth run with a short model pass: its measured time, and the default 30 steps at the measured
    time per step."""
    body = []
    for r in rows(stem):
        mp = r["model_pass"]
        at_default = r["wall_s"] + (30 - mp["steps"]) * mp["seconds_per_step"]
        verdict = "met" if at_default <= 15 * 60 and r["peak_gpu_gib"] <= 78 else "missed"
        body.append([f"{r['layers']}", f"{r['wall_s']:.1f} s", f"{mp['steps']}", f"{mp['seconds']:.1f} s",
                     f"{mp['seconds_per_step']:.1f} s", f"about {at_default / 60:.1f} min (target ≤ 15 min: {verdict})",
                     f"{r['peak_gpu_gib']:.1f} GiB"])
    return table(["layers", "whole prune", "model pass steps", "model pass", "per step",
                  "at the default 30 steps (projected)", "peak GPU memory"], body)


FIGURES["perm7b-global-32"] = lambda: _perm7b_whole("perm7b-global-32layers-h100")
for _gpu in ("h100", "h200"):
    if (RESULTS / f"perm7b-global-{_gpu}.json").exists():
        FIGURES["perm7b-global"] = (lambda stem: lambda: _perm7b(stem, {"global": "global (model pass)"}, True))(
            f"perm7b-global-{_gpu}")
