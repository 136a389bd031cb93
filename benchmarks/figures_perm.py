"""BENCHMARKS.md's channel-permutation tables and figures, from benchmarks/results/perm*.json (see render.py)."""
from __future__ import annotations

import math
import statistics

from benchmarks.figures import FIGURES, SMOLLM2_LAYERS, f2, figure, load, one, pct, pcts, rows, span, table, verdict, x

PER_TOKEN = "learned, kept by the per-token layer error"
PLAIN = "learned, kept by the plain layer error"


def cut(none: float, value: float, dense: float) -> float:
    """Share of the gap to dense (none − dense) that `value` closes."""
    return (none - value) / (none - dense)


# ---------------------------------------------------------------- CPU, one draw per cell


def _learned(pattern: str, method: str) -> dict | None:
    if (pattern, method) == ("2:4", "wanda"):
        return one("permutations-seeds", permute=PER_TOKEN, calib_seed=0)
    found = rows("permutations-learned-rows", pattern=pattern, method=method)
    return found[0] if found else None


def _cpu_cells():
    for r in rows("permutations", permute="none"):
        heur = one("permutations", pattern=r["pattern"], method=r["method"], permute="heuristic")
        yield r, heur, _learned(r["pattern"], r["method"])


@figure("perm-cpu")
def perm_cpu() -> str:
    dense, body = load("permutations")["dense_ppl"], []
    for none, heur, learned in _cpu_cells():
        lcut = pct(cut(none["ppl"], learned["ppl"], dense)) if learned else "—"
        body.append([none["pattern"], none["method"], f2(none["ppl"]), f2(heur["ppl"]),
                     f2(learned["ppl"]) if learned else "not run", f"{pct(cut(none['ppl'], heur['ppl'], dense))} / {lcut}",
                     f"{none['prune_s']:.0f} / {heur['prune_s']:.0f}" + (f" / {learned['prune_s']:.0f}" if learned else "")])
    return table(["pattern", "method", "none", "heuristic", "learned", "gap to dense cut, heuristic / learned",
                  "prune seconds none / heuristic / learned"], body)


NAMES = {"wanda": "Wanda", "ria": "RIA", "sparsegpt": "SparseGPT"}


def _learned_vs_heuristic() -> str:
    pairs = [(n["method"], n["pattern"], h["ppl"] - l["ppl"]) for n, h, l in _cpu_cells() if l]
    below = sorted((p for p in pairs if p[2] > 0), key=lambda p: -p[2])
    above = [p for p in pairs if p[2] <= 0]
    text = f"below the heuristic on {len(below)} of the {len(pairs)} rows run (" + ", ".join(
        f"{NAMES[m]} {p} by {d:.1f} points" for m, p, d in below) + ")"
    if above:
        text += ", above it on " + ", ".join(f"{NAMES[m]} {p} by {-d:.1f} points" for m, p, d in above)
    return text


FIGURES["perm.dense"] = lambda: f2(load("permutations")["dense_ppl"])
FIGURES["perm.heur_cut"] = lambda: pcts([cut(n["ppl"], h["ppl"], load("permutations")["dense_ppl"])
                                          for n, h, _ in _cpu_cells()])
FIGURES["perm.wanda24_cut"] = lambda: next(pct(cut(n["ppl"], h["ppl"], load("permutations")["dense_ppl"]))
                                           for n, h, _ in _cpu_cells() if (n["pattern"], n["method"]) == ("2:4", "wanda"))
FIGURES["perm.v_wanda24"] = lambda: verdict([next(cut(n["ppl"], h["ppl"], load("permutations")["dense_ppl"])
                                                  for n, h, _ in _cpu_cells() if (n["pattern"], n["method"]) == ("2:4", "wanda"))],
                                             0.15)
FIGURES["perm.learned_vs_heur"] = _learned_vs_heuristic
FIGURES["perm.cpu_time_ratio"] = lambda: span([l["prune_s"] / h["prune_s"] for _, h, l in _cpu_cells() if l],
                                              lambda v: f"{v:.0f}", "×")
FIGURES["perm.48_vs_24"] = lambda: "{:.1f}×".format(
    _learned("4:8", "wanda")["prune_s"] / _learned("2:4", "wanda")["prune_s"])


# ---------------------------------------------------------------- CPU: the swap search alone


@figure("perm-search-alone")
def perm_search_alone() -> str:
    none = one("permutations", pattern="2:4", method="wanda", permute="none")["ppl"]
    heur = one("permutations", pattern="2:4", method="wanda", permute="heuristic")["ppl"]
    dense = load("permutations")["dense_ppl"]
    body = [["heuristic, for reference", f2(heur), pct(cut(none, heur, dense))]]
    body += [[f"learned: {r['note']}", f2(r["ppl"]), pct(cut(none, r["ppl"], dense))] for r in rows("permutations-learned")]
    return table(["Wanda 2:4", "perplexity", "gap to dense cut vs none"], body)


FIGURES["perm.search_seed_spread"] = lambda: f2(abs(rows("permutations-learned")[0]["ppl"] - rows("permutations-learned")[1]["ppl"]))


FIGURES["ft.summary"] = lambda: (lambda r: "{} of {} layers, up to {} (layer 15: {})".format(
    sum(x["first_token_share"] > 0.5 for x in r), len(r), pct(max(x["first_token_share"] for x in r)),
    pct(r[15]["first_token_share"])))(rows("first-token"))


# ---------------------------------------------------------------- CPU: three calibration draws


def _draw(seed: int, kind: str) -> dict | None:
    if seed == 0 and kind in ("none", "heuristic"):
        return one("permutations", pattern="2:4", method="wanda", permute=kind)
    found = rows("permutations-seeds", calib_seed=seed, permute=kind)
    return found[0] if found else None


def _seeds() -> list[int]:
    return sorted({r["calib_seed"] for r in rows("permutations-seeds")})


@figure("perm-seeds")
def perm_seeds() -> str:
    kinds, body = ["none", "heuristic", PLAIN, PER_TOKEN], []
    for seed in _seeds():
        body.append([seed] + [f2(_draw(seed, k)["ppl"]) if _draw(seed, k) else "not run" for k in kinds])
    means = [statistics.mean(_draw(s, k)["ppl"] for s in _seeds()) for k in ("none", "heuristic", PER_TOKEN)]
    body.append(["mean", f2(means[0]), f2(means[1]), "—", f"**{f2(means[2])}**"])
    return table(["draw", "none", "heuristic", "learned, kept by the plain layer error",
                  "learned, kept by the per-token layer error"], body)


def _mean(kind: str) -> float:
    return statistics.mean(_draw(s, kind)["ppl"] for s in _seeds())


def _wins() -> str:
    diffs = [_draw(s, "heuristic")["ppl"] - _draw(s, PER_TOKEN)["ppl"] for s in _seeds()]
    won, lost = [d for d in diffs if d > 0], sorted(-d for d in diffs if d <= 0)
    count = {1: "one", 2: "two", 3: "three"}
    return (f"wins {count.get(len(won), len(won))} draw{'s' * (len(won) != 1)} by " + " and ".join(f"{d:.1f}" for d in won)
            + " points and loses " + ("the other two" if len(lost) == 2 else f"{len(lost)}") + " by "
            + " and ".join(f"{d:.1f}" for d in lost))


FIGURES["perm.plain_err"] = lambda: "{:.4f} vs the heuristic's {:.4f}".format(
    _draw(1, PLAIN)["mean_layer_error"], _draw(1, "heuristic")["mean_layer_error"])
FIGURES["perm.plain_ppl"] = lambda: " and ".join(f"{f2(r['ppl'])} on draw {r['calib_seed']}" for r in
                                                 sorted(rows("permutations-seeds", permute=PLAIN), key=lambda r: r["calib_seed"]))
FIGURES["perm.kept"] = lambda: span([int(r["groups_kept_learned"].split("/")[0]) for r in rows("permutations-seeds", permute=PER_TOKEN)],
                                    lambda v: str(v)) + " of " + rows("permutations-seeds", permute=PER_TOKEN)[0]["groups_kept_learned"].split("/")[1]
FIGURES["perm.seed_means"] = lambda: f"{f2(_mean(PER_TOKEN))} vs {f2(_mean('heuristic'))}"
FIGURES["perm.seed_cuts"] = lambda: "{} (heuristic {})".format(
    pct(cut(_mean("none"), _mean(PER_TOKEN), load("permutations")["dense_ppl"])),
    pct(cut(_mean("none"), _mean("heuristic"), load("permutations")["dense_ppl"])))
FIGURES["perm.v_seed_mean"] = lambda: verdict([cut(_mean("none"), _mean(PER_TOKEN), load("permutations")["dense_ppl"])], 0.15)
FIGURES["perm.seed0_time"] = lambda: "{:.0f}× the heuristic's CPU time ({:.0f} s vs {:.0f} s on draw 0)".format(
    _draw(0, PER_TOKEN)["prune_s"] / _draw(0, "heuristic")["prune_s"], _draw(0, PER_TOKEN)["prune_s"],
    _draw(0, "heuristic")["prune_s"])
FIGURES["perm.seed_wins"] = _wins


# ---------------------------------------------------------------- GPU: many draws


def _gpu_pairs() -> dict:
    pairs = {}
    for r in rows("permutations-draws-h200"):
        pairs.setdefault((r["pattern"], r["method"]), {}).setdefault(r["calib_seed"], {})[r["permute"]] = r
    return pairs


@figure("perm-gpu")
def perm_gpu() -> str:
    dense, body, pairs = load("permutations-draws-h200")["dense_ppl"], [], _gpu_pairs()
    for pattern in ("2:4", "4:8"):
        for method in ("wanda", "ria", "sparsegpt"):
            draws = pairs.get((pattern, method))
            if not draws:
                body.append([pattern, method, "—", "not run"] + [""] * 7)
                continue
            mean = {k: statistics.mean(d[k]["ppl"] for d in draws.values()) for k in ("none", "heuristic", "learned")}
            diffs = [d["heuristic"]["ppl"] - d["learned"]["ppl"] for d in draws.values()]
            med = {k: statistics.median(d[k]["prune_s"] for d in draws.values()) for k in ("none", "heuristic", "learned")}
            body.append([pattern, method, len(draws), f2(mean["none"]), f2(mean["heuristic"]), f2(mean["learned"]),
                         f"{pct(cut(mean['none'], mean['heuristic'], dense))} / {pct(cut(mean['none'], mean['learned'], dense))}",
                         f"{sum(d > 0 for d in diffs)} of {len(diffs)}",
                         f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f}".replace("-", "−"),
                         f"{med['none']:.1f} / {med['heuristic']:.1f} / {med['learned']:.1f}"])
    return table(["pattern", "method", "draws", "none", "heuristic", "learned", "gap to dense cut, heuristic / learned",
                  "learned below heuristic", "heuristic − learned, mean ± sd", "prune s (median) none / heuristic / learned"],
                 body)


@figure("perm-gpu-wanda")
def perm_gpu_wanda() -> str:
    draws = _gpu_pairs()[("2:4", "wanda")]
    return table(["Wanda 2:4 draw", "none", "heuristic", "learned"],
                 [[s, f2(d["none"]["ppl"]), f2(d["heuristic"]["ppl"]), f2(d["learned"]["ppl"])] for s, d in sorted(draws.items())])


def _all_draws() -> list[dict]:
    return [d for draws in _gpu_pairs().values() for d in draws.values()]


def _further() -> tuple[float, float]:
    dense = load("permutations-draws-h200")["dense_ppl"]
    shares = [(d["heuristic"]["ppl"] - d["learned"]["ppl"]) / (d["heuristic"]["ppl"] - dense) for d in _all_draws()]
    return statistics.mean(shares), statistics.stdev(shares) / math.sqrt(len(shares))


def _sign() -> tuple[int, int, float]:
    n = len(_all_draws())
    k = sum(d["heuristic"]["ppl"] > d["learned"]["ppl"] for d in _all_draws())
    return k, n, sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n


def _wanda_gpu() -> tuple[float, float]:
    diffs = [d["heuristic"]["ppl"] - d["learned"]["ppl"] for d in _gpu_pairs()[("2:4", "wanda")].values()]
    return statistics.mean(diffs), statistics.mean(diffs) / (statistics.stdev(diffs) / math.sqrt(len(diffs)))


def _gpu_mean(kind: str) -> float:
    return statistics.mean(d[kind]["ppl"] for d in _gpu_pairs()[("2:4", "wanda")].values())


FIGURES["draws.sign"] = lambda: "{} times of {} (a sign test gives p ≈ {:.2f} one-sided)".format(*_sign())
FIGURES["draws.sign_short"] = lambda: "{} of {}".format(*_sign()[:2])
FIGURES["draws.further"] = lambda: "{:.1f}% ± {:.1f}%".format(*(100 * v for v in _further()))
FIGURES["draws.wanda_adv"] = lambda: "{:.2f} points, is about {:.1f} standard errors".format(*_wanda_gpu())
FIGURES["draws.wanda_means"] = lambda: f"{f2(_gpu_mean('learned'))} vs {f2(_gpu_mean('heuristic'))}"
FIGURES["draws.wanda_n"] = lambda: str(len(_gpu_pairs()[("2:4", "wanda")]))
FIGURES["draws.time_ratio"] = lambda: span(
    [statistics.median(d["learned"]["prune_s"] for d in draws.values()) /
     statistics.median(d["heuristic"]["prune_s"] for d in draws.values()) for draws in _gpu_pairs().values()],
    lambda v: f"{v:.1f}", "×")


def _cpu_gpu() -> str:
    gpu = _gpu_pairs()[("2:4", "wanda")][0]
    cpu = {k: _draw(0, k) for k in ("none", "heuristic", PER_TOKEN)}
    return ("gives the heuristic {} on the CPU and {} on the GPU (learned {} and {}; none {} and {})".format(
        f2(cpu["heuristic"]["ppl"]), f2(gpu["heuristic"]["ppl"]), f2(cpu[PER_TOKEN]["ppl"]), f2(gpu["learned"]["ppl"]),
        f2(cpu["none"]["ppl"]), f2(gpu["none"]["ppl"])))


FIGURES["draws.cpu_gpu"] = _cpu_gpu
FIGURES["draws.cpu_gpu_diff"] = lambda: f"{abs(_draw(0, 'heuristic')['ppl'] - _gpu_pairs()[('2:4', 'wanda')][0]['heuristic']['ppl']):.1f}"


def _groups_per_layer() -> str:
    per = {}
    for stem in ("permutations-draws-h200", "permutations-learned-rows"):
        for r in rows(stem):
            if "groups_kept_learned" in r:
                per.setdefault(int(r["groups_kept_learned"].split("/")[1]) // SMOLLM2_LAYERS, set()).add(r["method"])
    return ", ".join(f"{g} for " + " and ".join(NAMES[m] for m in sorted(ms, key=list(NAMES).index))
                     for g, ms in sorted(per.items()))


FIGURES["perm.groups_per_layer"] = _groups_per_layer


# ---------------------------------------------------------------- 7B-shape timing


def _perm7b(stem: str, labels: dict, memory: bool) -> str:
    body = []
    for r in rows(stem):
        minutes = r["median_layer_s"] * 32 / 60
        projected = f"about {minutes:.1f} min"
        if r["permute"] == "learned":
            projected += f" (target ≤ 15 min: {'met' if minutes <= 15 else 'missed'})"
        body.append([labels.get(r["permute"], r["permute"]), f"{r['median_layer_s']:.2f} s", f"{r['wall_s']:.1f} s", projected]
                    + ([f"{r['peak_gpu_gib']:.1f} GiB"] if memory else []))
    layers = rows(stem)[0]["layers"]
    return table(["permute", "per layer (median)", f"whole prune, {layers} layers", "median × 32 layers"]
                 + (["peak GPU memory"] if memory else []), body)


FIGURES["perm7b-4layers"] = lambda: _perm7b("perm7b-4layers-h200", {
    "learned": "learned (the earlier Sinkhorn formulation, since replaced)"}, False)
FIGURES["perm7b-swap"] = lambda: _perm7b("perm7b-swap-h200", {"learned": "learned (swap search + layer-error check)"}, True)
