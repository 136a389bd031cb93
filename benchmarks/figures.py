"""Every table and marked figure of BENCHMARKS.md, computed from benchmarks/results/*.json (see render.py)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from benchmarks._meta import invocation

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES: dict = {}  # name -> () -> str
MLP_7B8B = ("7B gate/up", "7B down", "8B gate/up", "8B down")
SHAPES_7B = ("7B gate/up", "7B down", "7B qkvo")
SMOLLM2_LAYERS = 30  # decoder layers of SmolLM2-135M (groups per layer = groups / layers)
PRUNE7B_LAYERS = 32  # prune7b-h200.json predates the rows' `layers` field; 12.55 GiB of bf16 is 32 layers


def figure(name):
    def register(fn):
        FIGURES[name] = fn
        return fn
    return register


@lru_cache(maxsize=None)
def load(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())


def rows(stem: str, **match) -> list[dict]:
    out = []
    for row in load(stem)["rows"]:
        if all(row.get(k) in v if isinstance(v, (tuple, list, set)) else row.get(k) == v for k, v in match.items()):
            out.append(row)
    return out


def one(stem: str, **match) -> dict:
    found = rows(stem, **match)
    assert len(found) == 1, (stem, match, len(found))
    return found[0]


def f2(v: float) -> str:
    return f"{v:.2f}"


def x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def pcts(values) -> str:
    return span([100 * v for v in values], lambda v: f"{v:.0f}", "%")


def span(values, fmt=f2, unit: str = "") -> str:
    lo, hi = fmt(min(values)), fmt(max(values))
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


def verdict(values, target: float) -> str:
    """**met** when every value reaches the target, **missed** when none does, else how many do."""
    values = list(values)
    hits = sum(v >= target for v in values)
    return "**met**" if hits == len(values) else "**missed**" if hits == 0 else f"**met on {hits} of {len(values)}**"


def table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- provenance of every result file


LABELS = {"python": "python", "torch": "torch", "cuda": "CUDA", "triton": "Triton", "transformers": "transformers"}


def meta_line(stem: str) -> str:
    data = load(stem)
    m = data.get("meta", {})
    if not m.get("reconstructed"):
        v, mach = m["versions"], m["machine"]
        where = f"measured on one {mach['gpu']}" if mach.get("gpu") else f"CPU ({mach['cpu_count']} cores, {mach['cpu']})"
        cuda = f", CUDA {mach['cuda']}" if mach.get("cuda") else ""
        return (f"{where} · {m['date'][:10]} · commit {m['commit'][:7]}{' (dirty)' if m['dirty'] else ''} · "
                f"python {v['python']}, torch {v['torch']}{cuda}, transformers {v['transformers']}, compress {v['compress']}")
    v = m.get("versions", {})
    where = (f"measured on one {m['gpu']}" if m.get("gpu") else
             f"machine: {data['machine']} (written by hand)" if isinstance(data.get("machine"), str) else "machine not recorded")
    parts = [where] + [f"{label} {v.get(k) or m.get(k)}" for k, label in LABELS.items() if v.get(k) or m.get(k)]
    mark = "**assembled by hand**" if m.get("by_hand") else "reconstructed meta"
    last = m["last_committed"]
    return (f"{' · '.join(parts)} · {mark}: no commit, command or run date recorded "
            f"(stored version committed {last['date'][:10]} in {last['commit'][:7]})")


def command_block(stem: str) -> str:
    """The command a clean run recorded, as it is run today, as a code block."""
    return f"```bash\n{invocation(load(stem)['meta']['command'])}\n```"


for _path in sorted(RESULTS.glob("*.json")):
    FIGURES[f"meta/{_path.stem}"] = (lambda stem: lambda: meta_line(stem))(_path.stem)
    FIGURES[f"cmd/{_path.stem}"] = (lambda stem: lambda: command_block(stem))(_path.stem)


@figure("provenance")
def provenance() -> str:
    body = []
    for path in sorted(RESULTS.glob("*.json")):
        m = load(path.stem).get("meta", {})
        state = "assembled by hand" if m.get("by_hand") else "reconstructed meta" if m.get("reconstructed") else "clean"
        commit = (m.get("last_committed") or {}).get("commit") or m.get("commit") or "?"
        body.append([f"`{path.name}`", state, commit[:7], m.get("by_hand", "—"),
                     "; ".join(m.get("differs_from_script", [])) or "—"])
    return table(["file", "state", "run or stored at", "by hand", "keys that differ from what its script writes now"], body)


# ---------------------------------------------------------------- 7B pruning on one GPU


PRUNE7B = ("prune7b-h200", "prune7b-h200-47263c1")  # the current run, then one stored before meta existed


def run_of(stem: str) -> str:
    m = load(stem)["meta"]
    return (m.get("commit") or m["last_committed"]["commit"])[:7]


@figure("prune7b")
def prune7b() -> str:
    targets = {"wanda": 30, "sparsegpt": 90}
    body = [[r["method"], run_of(stem), f"**{r['wall_s']:.1f} s**",
             f"≤ {targets[r['method']]} s: {'met' if r['wall_s'] <= targets[r['method']] else '**missed**'}",
             f"{r['peak_gpu_gib']:.2f} GiB ({pct(r['peak_gpu_gib'] / r['model_gib'])} of the model)",
             f"{r['median_layer_s']:.2f} s"] for stem in PRUNE7B for r in rows(stem)]
    return table(["method", "run", "wall time", "target", "peak GPU memory", "per layer (median)"], body)


@figure("prune7b-phases")
def prune7b_phases() -> str:
    body = []
    for stem in PRUNE7B:
        for r in rows(stem):
            p, layers = r["phases_s"], r.get("layers", PRUNE7B_LAYERS)
            body.append([r["method"], run_of(stem), f"{p['load']:.1f}", f"{p['calibrate']:.1f}", f"{p['change']:.1f}",
                         f"{p['propagate']:.1f}", f"{p['unload']:.1f}", f"{(p['calibrate'] + p['propagate']) / layers:.2f}"])
    return table(["method", "run", "load", "calibration pass", "scoring + masking (SparseGPT: OBS sweeps)",
                  "propagation pass", "copy back", "both forward passes, per layer"], body)


def _phase(stem: str, method: str, phase: str) -> float:
    return one(stem, method=method)["phases_s"][phase]


FIGURES["prune7b.model_gib"] = lambda: f"{rows('prune7b-h200')[0]['model_gib']:.2f} GiB"
FIGURES["prune7b.tokens"] = lambda: f"{load('prune7b-h200')['meta']['tokens']:,}"
FIGURES["prune7b.run"] = lambda: run_of("prune7b-h200")
FIGURES["prune7b.wanda_forward"] = lambda: "{:.2f} s".format(
    (_phase("prune7b-h200", "wanda", "calibrate") + _phase("prune7b-h200", "wanda", "propagate")) / PRUNE7B_LAYERS)
FIGURES["prune7b.change"] = lambda: ", ".join(
    f"{m} {_phase('prune7b-h200-47263c1', m, 'change'):.1f} s → {_phase('prune7b-h200', m, 'change'):.1f} s"
    for m in ("wanda", "sparsegpt"))


# ---------------------------------------------------------------- every method on the default model (CPU)

PATTERN_NAMES = {"0.5": "50% unstructured"}


@figure("cpu-methods")
def cpu_methods() -> str:
    dense = load("cpu-methods")["dense_ppl"]
    body = [[PATTERN_NAMES.get(r["pattern"], r["pattern"]), r["method"], f2(r["pruned_ppl"]), x(r["pruned_ppl"] / dense),
             f"{r['prune_s']:.0f}", f2(r["peak_rss_gib"])] for r in rows("cpu-methods")]
    return table(["pattern", "method", "perplexity", "× dense", "prune seconds", "peak RSS GiB"], body)


def _calibration(stem: str) -> str:
    c = load(stem)["calibration"]
    return f"{c['nsamples']} × {c['seqlen']} tokens from {c['source'].removeprefix('austen:').replace('+', ', ')}, seed {c['seed']}"


FIGURES["cpu.calibration"] = lambda: _calibration("cpu-methods")
FIGURES["cpu.eval_tokens"] = lambda: f"{load('cpu-methods')['eval']['tokens']:,}"
FIGURES["cpu.eval_context"] = lambda: str(load("cpu-methods")["eval"]["context"])
FIGURES["cpu.dense"] = lambda: f2(load("cpu-methods")["dense_ppl"])
FIGURES["cpu.wanda_24_s"] = lambda: f"{one('cpu-methods', method='wanda', pattern='2:4')['prune_s']:.0f} s"
FIGURES["cpu.wanda_50_s"] = lambda: f"{one('cpu-methods', method='wanda', pattern='0.5')['prune_s']:.0f} s"
FIGURES["ties.2:4"] = lambda: f"{100 * one('ties', pattern='2:4')['tied_fraction']:.1f}%"
FIGURES["ties.6:8"] = lambda: f"{100 * one('ties', pattern='6:8')['tied_fraction']:.1f}%"
FIGURES["ties.4:8"] = lambda: f"{100 * one('ties', pattern='4:8')['tied_fraction']:.1f}%"


@figure("tie-rules")
def tie_rules() -> str:
    dense = load("tie-rules")["dense_ppl"]
    names = {"lower": "ties kept at the lower index (default)", "higher": "ties kept at the higher index",
             "row": "row: same fraction per row and block (default)", "block": "block: one threshold per block"}
    body = [[PATTERN_NAMES.get(r["pattern"], r["pattern"]), r["method"], names[r["rule"]], f2(r["perplexity"]),
             x(r["perplexity"] / dense)] for r in rows("tie-rules")]
    return table(["pattern", "method", "rule", "perplexity", "× dense"], body)


FIGURES["tie-rules.dense"] = lambda: f2(load("tie-rules")["dense_ppl"])
FIGURES["tie-rules.setup"] = lambda: (f"{load('tie-rules')['calibration']['nsamples']} × "
                                      f"{load('tie-rules')['calibration']['seqlen']} calibration tokens, seed 0; "
                                      f"{load('tie-rules')['eval']['tokens']:,} held-out tokens at context "
                                      f"{load('tie-rules')['eval']['context']}")


# ---------------------------------------------------------------- kernels: baseline table


def _cell(r: dict, key: str) -> str:
    return x(r.get(f"{key}_speedup")) if f"{key}_speedup" in r else ("n/a" if f"{key}_error" in r else "—")


@figure("kernels-baseline")
def kernels_baseline() -> str:
    body = []
    for r in rows("kernels-h200"):
        err = max(r.get(k, 0.0) for k in ("torch24_rel_err", "cslt24_rel_err", "slide68_rel_err"))
        body.append([r["dtype"], r["shape"], r["M"], f"{r['dense_ms']:.4f}", _cell(r, "torch24"), _cell(r, "cslt24"),
                     _cell(r, "slide68"), _cell(r, "slide68_mm") if "slide68_mm_speedup" in r else _cell(r, "slide68"),
                     f"{err:.0e}"])
    return table(["dtype", "shape (out×in)", "M", "dense ms", "torch 2:4", "cuSPARSELt 2:4", "6:8 slide",
                  "6:8 slide, mm only", "max rel err"], body)


def _speed(stem: str, key: str, **match) -> list[float]:
    return [r[f"{key}_speedup"] for r in rows(stem, **match) if f"{key}_speedup" in r]


BIG_M = (2048, 8192, 16384)
FIGURES["base.cslt_mlp_big"] = lambda: span(_speed("kernels-h200", "cslt24", shape=MLP_7B8B, M=BIG_M), unit="x")
FIGURES["base.cslt_16_big"] = lambda: ", ".join(
    f"{r['dtype']} {r['shape']} M = {r['M']} ({x(r['cslt24_speedup'])})" for r in rows("kernels-h200", M=BIG_M)
    if r.get("cslt24_speedup", 0) >= 1.6)
FIGURES["base.slide_big"] = lambda: span(_speed("kernels-h200", "slide68", M=BIG_M), unit="x")
FIGURES["base.slide_mm_big"] = lambda: span(_speed("kernels-h200", "slide68_mm", M=BIG_M), unit="x")
FIGURES["base.decode_fp16_7b8b"] = lambda: span(
    _speed("kernels-h200", "cslt24", M=16, dtype="float16", shape=MLP_7B8B), unit="x")
FIGURES["base.decode_fp16_70b"] = lambda: span(
    _speed("kernels-h200", "cslt24", M=16, dtype="float16", shape=("70B gate/up", "70B down")), unit="x")
FIGURES["base.v_24"] = lambda: verdict(_speed("kernels-h200", "cslt24", shape=MLP_7B8B, M=BIG_M), 1.6)
FIGURES["base.v_68"] = lambda: verdict(_speed("kernels-h200", "slide68", M=BIG_M), 1.25)
FIGURES["base.v_decode_bf16"] = lambda: verdict(_speed("kernels-h200", "cslt24", M=16, dtype="bfloat16"), 1.5)
FIGURES["base.decode_bf16"] = lambda: span(_speed("kernels-h200", "cslt24", M=16, dtype="bfloat16"), unit="x")


# ---------------------------------------------------------------- kernels: our paths


@figure("kernels-ours")
def kernels_ours() -> str:
    body = [[r["dtype"], r["shape"], r["M"], f"{1000 * r['dense_ms']:.1f}", _cell(r, "cslt24"), _cell(r, "ours24"),
             _cell(r, "gemv24"), _cell(r, "tc24"), _cell(r, "slide68"),
             f"{max(v for k, v in r.items() if k.endswith('_rel_err')):.0e}"] for r in rows("kernels-ours-h200")]
    return table(["dtype", "shape", "M", "dense µs", "cuSPARSELt 2:4", "ours: SparseLinear", "gemv 2:4",
                  "tensor-core 2:4", "slide 6:8", "max rel err"], body)


def _missing_rows() -> str:
    have = {(r["dtype"], r["shape"], r["M"]) for r in rows("kernels-ours-h200")}
    shapes = list(dict.fromkeys(r["shape"] for r in rows("kernels-ours-h200")))
    ms = sorted({r["M"] for r in rows("kernels-ours-h200")})
    want = [(d, s, m) for d in ("float16", "bfloat16") for s in shapes for m in ms]
    gone = [w for w in want if w not in have]
    if not gone:
        return f"All {len(want)} rows were measured."
    return f"{len(have)} of {len(want)} rows were measured; missing: " + ", ".join(f"{d} {s} M = {m}" for d, s, m in gone) + "."


FIGURES["ours.count"] = _missing_rows
FIGURES["ours.cslt_mlp_big"] = lambda: span(_speed("kernels-ours-h200", "cslt24", shape=MLP_7B8B, M=BIG_M), unit="x")
FIGURES["ours.transpose_cost"] = lambda: pct(max(
    r["cslt24_speedup"] / r["ours24_speedup"] - 1 for r in rows("kernels-ours-h200", shape=MLP_7B8B, M=BIG_M)))
FIGURES["ours.sl_mlp_big"] = lambda: span(_speed("kernels-ours-h200", "ours24", shape=MLP_7B8B, M=BIG_M), unit="x")
FIGURES["ours.sl_mlp_big_fp16"] = lambda: span(
    _speed("kernels-ours-h200", "ours24", shape=MLP_7B8B, M=BIG_M, dtype="float16"), unit="x")
FIGURES["ours.sl_mlp_big_bf16"] = lambda: span(
    _speed("kernels-ours-h200", "ours24", shape=MLP_7B8B, M=BIG_M, dtype="bfloat16"), unit="x")
FIGURES["ours.v_24"] = lambda: verdict(_speed("kernels-ours-h200", "ours24", shape=MLP_7B8B, M=BIG_M), 1.6)
FIGURES["ours.v_68"] = lambda: verdict(_speed("kernels-ours-h200", "slide68", M=BIG_M), 1.25)
FIGURES["ours.v_bf16"] = lambda: verdict(_speed("kernels-ours-h200", "ours24", dtype="bfloat16", M=(1, 16)), 1.5)
FIGURES["ours.slide_big"] = lambda: span(_speed("kernels-ours-h200", "slide68", M=BIG_M), unit="x")
FIGURES["ours.sl_m1"] = lambda: span(_speed("kernels-ours-h200", "ours24", M=1, dtype="float16"), unit="x")


def _decode(met: bool) -> str:
    cells = [(r["shape"], r["M"], r["ours24_speedup"]) for r in rows("kernels-ours-h200", dtype="float16", M=(1, 16))]
    chosen = [c for c in cells if (c[2] >= 1.5) == met]
    return ", ".join(f"{s} M = {m} ({x(v)})" for s, m, v in chosen)


FIGURES["ours.decode_met"] = lambda: _decode(True)
FIGURES["ours.decode_missed"] = lambda: _decode(False)
FIGURES["ours.decode_cslt_7b8b_gateup"] = lambda: (lambda found: " and ".join(f"{r['cslt24_speedup']:.4f}x" for r in found)
                                                    + f" (target: {verdict([r['cslt24_speedup'] for r in found], 1.5)})")(
    rows("kernels-ours-h200", dtype="float16", M=16, shape=("7B gate/up", "8B gate/up")))
FIGURES["ours.decode_bf16"] = lambda: span(_speed("kernels-ours-h200", "ours24", dtype="bfloat16", M=(1, 16)), unit="x")
FIGURES["ours.gemv_bf16_m1"] = lambda: span(_speed("kernels-ours-h200", "gemv24", dtype="bfloat16", M=1), unit="x")
FIGURES["ours.gemv_m16"] = lambda: span(_speed("kernels-ours-h200", "gemv24", M=16), unit="x")
FIGURES["ours.tc"] = lambda: span(_speed("kernels-ours-h200", "tc24"), unit="x")


@figure("cslt-transposed")
def cslt_transposed() -> str:
    body = [[f"{r['out']}×{r['in']}", r["M"], x(r["plain_speedup"]), x(r["transposed_default_alg_speedup"]),
             x(r["transposed_plain_alg_speedup"]), r["transposed_search"].split(" when calling")[0].replace("`", "")]
            for r in rows("cslt-transposed-h200")]
    return table(["shape (out×in)", "M", "plain (feature-major)", "transpose_result, default algorithm",
                  "transpose_result, plain layout's algorithm", "algorithm search for transpose_result"], body)


FIGURES["cslt.plain_alg"] = lambda: span([r["transposed_plain_alg_speedup"] for r in rows("cslt-transposed-h200")], unit="x")
FIGURES["cslt.default_alg"] = lambda: span([r["transposed_default_alg_speedup"] for r in rows("cslt-transposed-h200")], unit="x")
FIGURES["cslt.search"] = lambda: "{} of {}".format(
    sum(r["transposed_search"].startswith("failed") for r in rows("cslt-transposed-h200")), len(rows("cslt-transposed-h200")))


# ---------------------------------------------------------------- end to end


def _e2e_rows(stem: str, phase_label=None) -> list[list]:
    return [[phase_label or r["phase"], r["batch"], r["tokens"], f2(r["dense_ms"]), f2(r["sparse_ms"]),
             f"{r['dense_tok_s']:,.0f}", f"{r['sparse_tok_s']:,.0f}", f"**{x(r['speedup'])}**", f"{r['logits_rel_err']:.4f}"]
            for r in rows(stem)]


E2E_HEADER = ["phase", "batch", "tokens per call", "dense ms", "2:4 ms", "dense tokens/s", "2:4 tokens/s", "speedup",
              "logits rel. error"]
FIGURES["e2e"] = lambda: table(E2E_HEADER, _e2e_rows("e2e7b-h200"))
FIGURES["e2e-compile"] = lambda: table(E2E_HEADER, _e2e_rows("e2e7b-compile-h200", "prefill, compiled"))
FIGURES["e2e.v_prefill"] = lambda: verdict([r["speedup"] for r in rows("e2e7b-h200", phase="prefill")], 1.3)
FIGURES["e2e.v_compiled"] = lambda: verdict([r["speedup"] for r in rows("e2e7b-compile-h200")], 1.3)
FIGURES["e2e.prefill"] = lambda: span([r["speedup"] for r in rows("e2e7b-h200", phase="prefill")], unit="x")
FIGURES["e2e.decode"] = lambda: span([r["speedup"] for r in rows("e2e7b-h200", phase="decode")], unit="x")
FIGURES["e2e.logits"] = lambda: f"{100 * max(r['logits_rel_err'] for r in rows('e2e7b-h200', phase='prefill')):.1f}%"
FIGURES["e2e.linears"] = lambda: span(
    _speed("kernels-ours-h200", "ours24", shape=SHAPES_7B, dtype="float16", M=(2048, 8192)), unit="x")
FIGURES["e2e.dense_b1"] = lambda: f"{one('e2e7b-h200', phase='prefill', batch=1)['dense_ms']:.1f}"
FIGURES["e2e.dense_b1_compiled"] = lambda: f"{one('e2e7b-compile-h200', batch=1)['dense_ms']:.1f}"
FIGURES["e2e.speedup_b1"] = lambda: x(one("e2e7b-h200", phase="prefill", batch=1)["speedup"])
FIGURES["e2e.speedup_b1_compiled"] = lambda: x(one("e2e7b-compile-h200", batch=1)["speedup"])


def _linears_ms() -> float:
    """Dense float16 time of one 7B decoder layer's Linears at M = 2048 (kernel table) × the e2e run's layers."""
    dense = {r["shape"]: r["dense_ms"] for r in rows("kernels-ours-h200", dtype="float16", M=2048)}
    return (4 * dense["7B qkvo"] + 2 * dense["7B gate/up"] + dense["7B down"]) * load("e2e7b-compile-h200")["meta"]["layers"]


def _needed() -> float:
    """Linear speedup that would give 1.3x end to end if the rest of the compiled dense step stayed as it is."""
    step = one("e2e7b-compile-h200", batch=1)["dense_ms"]
    return _linears_ms() / (step / 1.3 - (step - _linears_ms()))


def _linears_speedup() -> float:
    """SparseLinear over dense for the same sum of float16 7B Linears at M = 2048."""
    r = {r["shape"]: r for r in rows("kernels-ours-h200", dtype="float16", M=2048)}
    count = {"7B qkvo": 4, "7B gate/up": 2, "7B down": 1}
    dense = sum(n * r[s]["dense_ms"] for s, n in count.items())
    return dense / sum(n * r[s]["dense_ms"] / r[s]["ours24_speedup"] for s, n in count.items())


FIGURES["e2e.linears_ms"] = lambda: f"{_linears_ms():.1f} ms"
FIGURES["e2e.linears_sum"] = lambda: x(_linears_speedup())
FIGURES["e2e.linears_2048"] = lambda: span(_speed("kernels-ours-h200", "ours24", shape=SHAPES_7B, dtype="float16", M=2048), unit="x")
FIGURES["e2e.needed"] = lambda: x(_needed())
FIGURES["e2e.cslt_2048"] = lambda: span(_speed("kernels-ours-h200", "cslt24", shape=SHAPES_7B, dtype="float16", M=2048), unit="x")


# ---------------------------------------------------------------- eval --kernels


def _eval(path: str) -> dict:
    return next(r for r in load("eval-kernels-1b-h200")["results"] if r["path"] == path)


@figure("eval-kernels")
def eval_kernels() -> str:
    dense, kern = _eval("dense"), _eval("kernels")
    return table(["path", "perplexity", "tokens/s"], [
        ["dense (the unpacked weights on cuBLAS)", f"{dense['perplexity']:,.2f}", f"{dense['tokens_per_second']:,.0f}"],
        ["kernels (cuSPARSELt + transposes)", f"{kern['perplexity']:,.2f}",
         f"{kern['tokens_per_second']:,.0f} (**{x(kern['tokens_per_second'] / dense['tokens_per_second'])}**)"]])


FIGURES["evalk.shape"] = lambda: (lambda sh: f"hidden {sh['hidden']}, MLP {sh['intermediate']}, {sh['layers']} layers, "
                                            f"{sh['heads']} heads / {sh['kv_heads']} KV heads")(load("eval-kernels-1b-h200")["meta"]["shape"])
FIGURES["evalk.paths"] = lambda: ", ".join(f"{n} Linears on {p}" for p, n in _eval("kernels")["linears_per_path"].items())
FIGURES["evalk.tokens"] = lambda: f"{_eval('dense')['tokens']:,}"
FIGURES["evalk.context"] = lambda: str(_eval("dense")["context"])
FIGURES["evalk.ppl_rel"] = lambda: f"{abs(_eval('kernels')['perplexity'] / _eval('dense')['perplexity'] - 1):.0e}"
