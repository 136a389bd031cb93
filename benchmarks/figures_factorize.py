"""BENCHMARKS.md's FactorLLM table and figures, from benchmarks/results/factorize.json (see render.py)."""
from __future__ import annotations

from benchmarks.figures import f2, figure, load, table, x

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
    body = [["dense", "—", "—", "—", "1.00", f2(data["dense_ppl"]), "1.00x", "—", "—", "—", "—"]]
    for r in _rows():
        agreement = "—" if r["held_out_agreement"] is None else f"{r['held_out_agreement']:.2f} ({r['chance_agreement']:.2f})"
        load_max = "—" if r["max_expert_load"] is None else f"{r['max_expert_load']:.2f}"
        body.append([_label(r), r["split"], r.get("scale", "experts"), r["steps"], f2(r["ffn_flops_share"]), ppl(r["ppl"]),
                     ratio(r["ppl_ratio"]),
                     f"{r['factorize_seconds']:.0f}", agreement, load_max, f"{r['load_average'][0]:.0f}–{r['load_average'][1]:.0f}"])
    return table(["variant", "split", "scale", "router steps", "FFN FLOPs vs dense", "perplexity", "vs dense", "factorize s",
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
        scale = r.get("scale", "experts")
        trained = [t for t in _rows() if (t["experts"], t["top_k"], t["granularity"], t["split"], t.get("scale", "experts"))
                   == (r["experts"], r["top_k"], r["granularity"], r["split"], scale) and t["steps"]]
        body.append([_label(r), r["split"], scale, ppl(r["ppl"]), ratio(r["ppl_ratio"]),
                     f"{ppl(trained[0]['ppl'])} ({ratio(trained[0]['ppl_ratio'])})" if trained else "not run"])
    return table(["variant", "split", "scale", "perplexity, oracle routing", "vs dense", "trained router (vs dense)"],
                 body)


@figure("factorize-oracle.dense")
def oracle_dense() -> str:
    return f2(load("factorize-oracle")["dense_ppl"])


@figure("factorize-oracle.k3")
def oracle_k3() -> str:
    found = [r for r in load("factorize-oracle")["rows"] if (r["experts"], r["top_k"], r["granularity"]) == (4, 3, 1)
             and r.get("scale", "experts") == "top-k"]
    return f"{ratio(found[0]['ppl_ratio'])} dense ({found[0]['split']} split)" if found else "not measured"


# ---------------------------------------------------------------- stage B (results/factorize-finetune.json)
def _finetune_table(stem: str) -> str:
    data = load(stem)
    dense = data["dense_ppl"]
    body = [["dense", "—", f2(dense), "1.00x", "—", "—"]]
    trained = {"dense-finetuned": "MLP weights, next-token loss", "router": "routers (stage A)",
               "router+experts": "routers, then experts and routers (stage B)"}
    for r in data["rows"]:
        if r["row"].startswith("active:"):  # compress factorize --active A as it is by default, then stage B
            name = f"--active {r['row'].split()[0].split(':')[1]} ({r['experts']} routed experts, top {r['top_k']})"
            how = "none: carved, analytic router" if r["kind"] == "router" else "stage B (experts and routers)"
        else:
            name = "dense" if r["kind"] == "dense-finetuned" else f"{_label(r)}, {r['split']} split"
            how = trained[r["kind"]]
        body.append([name, how, ppl(r["ppl"]), ratio(r["ppl"] / dense), f"{r['train_seconds']:.0f}",
                     f"{r['train_tokens']:,}"])
    return table(["model", "trained", "perplexity", "vs dense", "train s", "train tokens"], body)


def _finetune_setup(stem: str) -> str:
    d = load(stem)
    fitted = "" if all(r["row"].startswith("active:") for r in d["rows"]) else (
        f", routers first fitted with {d['router_steps']} steps per layer")
    return (f"{d['steps']} Adam steps of {d['batch']} × {d['seqlen']} tokens, lr {d['lr']:g} (cosine){fitted} · "
            f"perplexity on {d['eval_tokens']:,} tokens of Persuasion, context {d['context']}")


@figure("factorize-finetune")
def finetune_table() -> str:
    return _finetune_table("factorize-finetune")


@figure("factorize-finetune.setup")
def finetune_setup() -> str:
    return _finetune_setup("factorize-finetune")


@figure("factorize-finetune-active")
def finetune_active_table() -> str:
    return _finetune_table("factorize-finetune-active")


@figure("factorize-finetune-active.setup")
def finetune_active_setup() -> str:
    return _finetune_setup("factorize-finetune-active")


@figure("factorize-finetune-active.bar")
def finetune_active_bar() -> str:
    """The issue's bar: stage B within 30 CPU minutes brings --active 0.25 to at most 1.8x dense."""
    data = load("factorize-finetune-active")
    found = [r for r in data["rows"] if r["row"] == "active:0.25 router+experts"]
    if not found:
        return "not measured"
    r = found[0]
    within = r["train_seconds"] <= 1800
    met = "**met**" if within and r["ppl"] / data["dense_ppl"] <= 1.8 else "**missed**"
    return (f"25% active at most 1.8x dense within 30 minutes: {met}, {ratio(r['ppl'] / data['dense_ppl'])} dense after "
            f"{r['train_seconds'] / 60:.0f} minutes of stage B" + ("" if within else " (over the 30-minute budget)"))


# ---------------------------------------------------------------- GPU latency (results/factorize-gpu-h200.json)
GPU = "factorize-gpu-h200"
IMPLS = ["eager", "batched_mm", "grouped_mm", "compress"]


def _cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    if row.get("error"):
        return "fails (" + row["error"].split(":")[0] + ")"
    graph = "" if row["graph"] else ", no graph"
    return f"{row['moe_ms']:.3f} ms ({row['speedup']:.2f}x{graph})"


@figure("factorize-gpu")
def gpu_table() -> str:
    data = load(GPU)
    body = []
    shapes = sorted({(r["batch"], r["tokens"]) for r in data["rows"]}, key=lambda s: s[0] * s[1])
    for batch, tokens in shapes:
        found = [r for r in data["rows"] if (r["batch"], r["tokens"]) == (batch, tokens)]
        for experts, top_k in sorted({(r["experts"], r["top_k"]) for r in found}):
            cells = {r["implementation"]: r for r in found if (r["experts"], r["top_k"]) == (experts, top_k)}
            name = f"1R{experts}E{top_k}K" if experts == 4 else f"{experts} experts, top {top_k}"
            body.append([f"{batch}×{tokens}", name, f"{found[0]['dense_ms']:.3f}"] + [_cell(cells.get(i)) for i in IMPLS])
    return table(["batch×tokens", "variant", "dense ms", "transformers eager", "transformers batched_mm",
                  "transformers grouped_mm", "compress (FactorizedMLP)"], body)


def _speedup(batch: int, tokens: int) -> float | None:
    found = [r for r in load(GPU)["rows"] if (r["batch"], r["tokens"], r["experts"], r["top_k"]) == (batch, tokens, 4, 1)
             and r.get("speedup")]
    return max(r["speedup"] for r in found) if found else None


@figure("factorize-gpu.bar_prefill")
def gpu_bar_prefill() -> str:
    best = _speedup(8, 2048)
    return "not measured" if best is None else f"{'**met**' if best >= 3 else '**missed**'}: {best:.2f}x"


@figure("factorize-gpu.bar_decode")
def gpu_bar_decode() -> str:
    best = _speedup(1, 1)
    return "not measured" if best is None else f"{'**met**' if best >= 2 else '**missed**'}: {best:.2f}x"


@figure("factorize-gpu.checks")
def gpu_checks() -> str:
    checks = [c for c in load(GPU)["checks"] if "relative_error" in c]
    worst = max(c["relative_error"] for c in checks)
    return f"{len(checks)} checks, largest relative error {worst:.4f} (bf16)"


@figure("factorize-finetune.summary")
def finetune_summary() -> str:
    data = load("factorize-finetune")
    dense, parts = data["dense_ppl"], []
    for stage_a in (r for r in data["rows"] if r["kind"] == "router"):
        stage_b = [r for r in data["rows"] if r["kind"] == "router+experts" and r["row"].split()[0] == stage_a["row"].split()[0]]
        after = ratio(stage_b[0]["ppl"] / dense) if stage_b else "not measured"
        parts.append(f"{_label(stage_a)} {ratio(stage_a['ppl'] / dense)} → {after} dense")
    tuned = [r for r in data["rows"] if r["kind"] == "dense-finetuned"]
    return "; ".join(parts) + (f"; the fine-tuned dense model {ratio(tuned[0]['ppl'] / dense)}" if tuned else "")
