"""BENCHMARKS.md's FactorLLM table and figures, from benchmarks/results/factorize.json (see render.py)."""
from __future__ import annotations

from figures import f2, figure, load, table, x

STEM = "factorize"


def ppl(v: float) -> str:
    return f2(v) if v < 1000 else f"{v:,.0f}"


def ratio(v: float) -> str:
    return x(v) if v < 100 else f"{v:,.0f}x"


def _rows() -> list[dict]:
    return load(STEM)["rows"]


def _label(row: dict) -> str:
    n, k = row["experts"] * row["granularity"], row["top_k"] * row["granularity"]
    return f"{n} experts, top {k}" if row["granularity"] > 1 else f"1R{row['experts']}E{row['top_k']}K"


def _best(experts: int, top_k: int) -> dict | None:
    trained = [r for r in _rows() if (r["experts"], r["top_k"], r["granularity"]) == (experts, top_k, 1) and r["steps"]]
    return min(trained, key=lambda r: r["ppl"]) if trained else None


def _bar(experts: int, top_k: int, limit: float) -> str:
    best = _best(experts, top_k)
    if best is None:
        return "not measured"
    met = "**met**" if best["ppl_ratio"] <= limit else "**missed**"
    return f"{met}: best {ratio(best['ppl_ratio'])} dense ({best['split']} split)"


@figure("factorize")
def factorize_table() -> str:
    data = load(STEM)
    body = [["dense", "—", "—", "1.00", f2(data["dense_ppl"]), "1.00x", "—", "—", "—", "—"]]
    for r in _rows():
        agreement = "—" if r["held_out_agreement"] is None else f"{r['held_out_agreement']:.2f} ({r['chance_agreement']:.2f})"
        load_max = "—" if r["max_expert_load"] is None else f"{r['max_expert_load']:.2f}"
        body.append([_label(r), r["split"], r["steps"], f2(r["ffn_flops_share"]), ppl(r["ppl"]), ratio(r["ppl_ratio"]),
                     f"{r['factorize_seconds']:.0f}", agreement, load_max, f"{r['load_average'][0]:.0f}–{r['load_average'][1]:.0f}"])
    return table(["variant", "split", "router steps", "FFN FLOPs vs dense", "perplexity", "vs dense", "factorize s",
                  "router agreement (chance)", "max expert load", "load average"], body)


@figure("factorize.bar_4e2k")
def bar_4e2k() -> str:
    return _bar(4, 2, 1.3)


@figure("factorize.bar_4e1k")
def bar_4e1k() -> str:
    return _bar(4, 1, 2.0)


@figure("factorize.default_minutes")
def default_minutes() -> str:
    found = [r for r in _rows() if r["row"] == "4:1:1:contiguous:200"]
    if not found:
        return "not measured"
    minutes = found[0]["factorize_seconds"] / 60
    return f"{'**met**' if minutes <= 15 else '**missed**'}: {minutes:.1f} min"


@figure("factorize.setup")
def setup() -> str:
    d = load(STEM)
    return (f"{d['nsamples']} × {d['seqlen']} = {d['calibration_tokens']:,} calibration tokens · perplexity on the first "
            f"{d['eval_tokens']:,} predicted tokens of Persuasion, context {d['context']} · {d['threads']} threads")


@figure("factorize-oracle")
def oracle_table() -> str:
    data = load("factorize-oracle")
    body = []
    for r in data["rows"]:
        trained = [t for t in _rows() if (t["experts"], t["top_k"], t["granularity"], t["split"]) ==
                   (r["experts"], r["top_k"], r["granularity"], r["split"]) and t["steps"]]
        body.append([_label(r), r["split"], ppl(r["ppl"]), ratio(r["ppl_ratio"]),
                     f"{ppl(trained[0]['ppl'])} ({ratio(trained[0]['ppl_ratio'])})" if trained else "not run"])
    return table(["variant", "split", "perplexity, oracle routing", "vs dense", "trained router (vs dense)"], body)


@figure("factorize-oracle.dense")
def oracle_dense() -> str:
    return f2(load("factorize-oracle")["dense_ppl"])


@figure("factorize-oracle.k3")
def oracle_k3() -> str:
    found = [r for r in load("factorize-oracle")["rows"] if (r["experts"], r["top_k"], r["granularity"]) == (4, 3, 1)]
    return f"{ratio(found[0]['ppl_ratio'])} dense ({found[0]['split']} split)" if found else "not measured"
