"""BENCHMARKS.md's Double Sparsity tables and figures, from benchmarks/results/attention-*.json (see render.py)."""
from __future__ import annotations

from benchmarks.figures import FIGURES, RESULTS, figure, load, pct, table, verdict

QUALITY = "attention-quality"
KERNELS = "attention-kernels-h200"


def _dense(context: int) -> float:
    return next(r["perplexity"] for r in load(QUALITY)["perplexity"] if r["selection"] == "dense" and r["context"] == context)


def _label(r: dict) -> str:
    if r["selection"] == "oracle":
        return "oracle: exact top-T by the true logits"
    if r["selection"] == "sink+recent":
        return "4 sink + most recent tokens"
    extra = "" if r.get("per_kv_head", True) else ", a channel set per query head"
    if r.get("position_prior"):
        extra += ", position prior"
    if r.get("sink") or r.get("recent"):
        extra += f", {r['sink']} sink + {r['recent']} recent inside T"
    if r.get("labels") == "projection":
        return f"projected labels (rank = channels{extra})"
    return f"labels ({r['mode']}{extra})"


@figure("attention-quality")
def attention_quality() -> str:
    body = []
    for r in load(QUALITY)["perplexity"]:
        dense = _dense(r["context"])
        if r["selection"] == "dense":
            body.append([r["context"], r["windows"], "dense", "all", "all", "—", f"{r['perplexity']:.2f}", "—", "100%"])
            continue
        channels = "all" if r["selection"] != "labels" else f"{r['channels_asked']} ({r['channels']})"
        bits = "—" if r["selection"] != "labels" else r["label_bits"]
        tokens = r["tokens_asked"] if r["selection"] != "sink+recent" else f"1/16 ({r['budget']})"
        tokens = f"{tokens} ({r['budget']})" if r["selection"] != "sink+recent" and r["budget"] else tokens
        body.append([r["context"], r["windows"], _label(r), channels, tokens, bits, f"{r['perplexity']:.2f}",
                     f"{100 * (r['perplexity'] / dense - 1):+.1f}%", pct(r["kept_share"])])
    return table(["context", "windows", "selection", "channels (count)", "tokens (T)", "label bits", "perplexity",
                  "vs dense", "past tokens read"], body)


def _main(context: int) -> dict:
    return next(r for r in load(QUALITY)["perplexity"] if r["context"] == context and r["selection"] == "labels"
                and r["mode"] == "qk" and r["channels_asked"] == "1/16" and r["tokens_asked"] == "1/16"
                and r["label_bits"] == 4 and not r["sink"] and not r["recent"] and r["per_kv_head"]
                and r.get("labels", "channels") == "channels" and not r.get("position_prior"))


def _best(context: int) -> dict:
    """The lowest perplexity of any label row at 1/16 channels and 1/16 tokens at `context`."""
    return min((r for r in load(QUALITY)["perplexity"] if r["context"] == context and r["selection"] == "labels"
                and r["channels_asked"] == "1/16" and r["tokens_asked"] == "1/16"), key=lambda r: r["perplexity"])


def _best_text(context: int) -> str:
    r = _best(context)
    return f"{100 * (r['perplexity'] / _dense(context) - 1):+.1f}% ({_label(r)})"


def _contexts() -> list[int]:
    return sorted({r["context"] for r in load(QUALITY)["perplexity"] if r["selection"] == "dense"})


def _increase(context: int) -> float:
    return _main(context)["perplexity"] / _dense(context) - 1


FIGURES["attention.increase-1-16"] = lambda: f"{100 * _increase(load(QUALITY)['perplexity'][0]['context']):+.1f}%"
FIGURES["attention.increase-1-16-long"] = lambda: f"{100 * _increase(max(r['context'] for r in load(QUALITY)['perplexity'])):+.1f}%"
FIGURES["attention.target-1-16"] = lambda: ("met" if max(_increase(r["context"]) for r in load(QUALITY)["perplexity"]
                                                          if r["selection"] == "dense") <= 0.05 else "**missed**")
FIGURES["attention.best-1-16"] = lambda: f"{_best_text(_contexts()[0])} at {_contexts()[0]} tokens and " \
    f"{_best_text(_contexts()[-1])} at {_contexts()[-1]}"
FIGURES["attention.target-1-16-best"] = lambda: (
    "met" if max(_best(c)["perplexity"] / _dense(c) - 1 for c in _contexts()) <= 0.05 else "**missed**")


def _settings(r: dict) -> str:
    if r.get("labels") == "projection":
        return "projected labels" + (" + prior" if r.get("position_prior") else "")
    return ("qk labels" + (" + prior" if r.get("position_prior") else "")
            + (" + window" if r.get("recent") else ""))


FIGURES["attention.greedy"] = lambda: "; ".join(
    f"{_settings(r)}: {pct(r['agreement'])} (common prefix {r['common_prefix']} "
    f"of {r['new_tokens']})" for r in load(QUALITY)["greedy"]["rows"])
FIGURES["attention.passkey"] = lambda: "; ".join(
    f"{_settings(r)}, {r['length']} tokens, {r['trials']} trials: dense {pct(r['dense'])}, sparse {pct(r['sparse'])}"
    for r in load(QUALITY)["passkey"]["rows"])


@figure("attention-kernels")
def attention_kernels() -> str:
    others = ("sparse_threshold_16bit_ms", "sparse_topk_half_4bit_ms", "sparse_topk_half_ms", "sparse_topk_ms")
    body = [[r["shape"], r["dtype"], r["batch"], r["context"], f"{r['dense_ms']:.4f}", f"{r['sparse_ms']:.4f}",
             f"{r['score_ms']:.4f} / {r['select_ms']:.4f} / {r['attend_ms']:.4f}", f"**{r['speedup']:.2f}x**",
             f"{r['dense_ms'] / r['sparse_prior_ms']:.2f}x" if "sparse_prior_ms" in r else "—",
             " / ".join(f"{r['dense_ms'] / r[key]:.2f}x" for key in others),
             f"{r['bytes_limit_speedup']:.2f}x", pct(r["share_of_limit"]), f"{r['dense_tb_per_s']:.2f}"]
            for r in load(KERNELS)["rows"]]
    return table(["shape", "dtype", "batch", "context", "dense SDPA ms", "Double Sparsity ms",
                  "score / select / attend ms (each alone)", "speedup", "speedup with the position prior",
                  "speedup of the other paths: threshold, 16-bit labels / topk float16, 4-bit / topk float16, "
                  "16-bit / topk float32, 16-bit", "bytes-read limit (4-bit labels)", "share of limit", "dense TB/s"],
                 body)


def _passed(check: dict) -> bool:
    """By the GPU tests' rules (recomputed: results stored before them counted by looser ones)."""
    from compress.attention.decode_kernels.bench import check_failures

    return not check_failures(check)


def _target_rows() -> list[dict]:
    return [r for r in load(KERNELS)["rows"] if r["batch"] == 16 and r["context"] == 65536 and r["dtype"] == "float16"]


FIGURES["attention.kernel-target"] = lambda: verdict([r["speedup"] for r in _target_rows()], 8.0)
FIGURES["attention.kernel-target-speedups"] = lambda: ", ".join(f"{r['shape']} {r['speedup']:.2f}x" for r in _target_rows())
FIGURES["attention.kernel-checks"] = lambda: (
    f"{sum(_passed(c) for c in load(KERNELS)['checks'])} of "
    f"{len(load(KERNELS)['checks'])} checks, largest output error "
    f"{max(c['output_error'] for c in load(KERNELS)['checks']):.1e}")



@figure("attention-passkey")
def attention_passkey() -> str:
    body = []
    for r in load("attention-passkey")["rows"]:
        window = f", {r['sink']} sink + {r['recent']} recent inside T" if r["sink"] or r["recent"] else ""
        body.append([r["length"], f"{r['mode']}, channels {r['channels']}, tokens {r['tokens']}{window}", r["trials"],
                     pct(r["dense"]), pct(r["sparse"]), f"{r['seconds']:.0f}"])
    return table(["prompt tokens", "Double Sparsity", "trials", "dense found", "sparse found", "seconds"], body)


DECODE = "attention-decode-h200"  # benchmarks/attention_decode.py; "not yet measured" until its result is stored
DECODE_COMMAND = "python -m benchmarks.attention_decode --json benchmarks/results/attention-decode-h200.json"


def _decode_measured() -> bool:
    return (RESULTS / f"{DECODE}.json").exists()


@figure("attention-decode")
def attention_decode() -> str:
    if not _decode_measured():
        return "_Not yet measured: the command below writes `results/attention-decode-h200.json`._"
    body = [[r["dtype"], r["batch"], r["context"], r["budget"], f"{r['dense_ms']:.3f}", f"{r['sparse_ms']:.3f}",
             f"{r['skip_attention_ms']:.3f}", f"{r['dense_tokens_per_s']:,.0f}", f"{r['sparse_tokens_per_s']:,.0f}",
             f"**{r['speedup']:.2f}x**", pct(r["attention_share_dense"]),
             "n/a" if r["attention_speedup"] is None else f"{r['attention_speedup']:.2f}x",
             "yes" if r["graph"] else "no (eager)"] for r in load(DECODE)["rows"]]
    return table(["dtype", "batch", "context", "T", "dense step ms", "Double Sparsity step ms",
                  "step without attention ms", "dense tokens/s", "Double Sparsity tokens/s", "end-to-end speedup",
                  "attention share of the dense step", "attention speedup", "one CUDA graph"], body)


def _decode_checks() -> str:
    if not _decode_measured():
        return "not yet measured"
    from compress.attention.decoding.generate_check import failed_rules

    data = load(DECODE)
    rows = data["generation"]
    sparse_layers = data["model"]["architecture"]["num_hidden_layers"] - data["settings"]["dense_layers"]
    passed = sum(not failed_rules(r, sparse_layers) for r in rows)  # the tests' rules, recomputed
    return (f"{passed} of {len(rows)} generation checks passed by the test suite's rules "
            f"(prompt {rows[0]['prompt']}, {rows[0]['new_tokens']} new tokens; largest logit error vs dense "
            f"{max(r['dense_logit_error'] for r in rows):.1e}, vs the evaluation mode "
            f"{max(r['sparse_logit_error_vs_evaluation'] for r in rows):.1e}); label append kernel bit-equal to "
            f"label_cache: {({True: 'yes', False: 'no', None: 'not checked'})[data['checks']['append_labels_exact']]}; host reads of tensor values "
            f"in a decode step: {sum(data['checks']['host_syncs_per_step'].values())}")


FIGURES["attention.decode-checks"] = _decode_checks
FIGURES.setdefault(f"meta/{DECODE}", lambda: "not yet measured")
FIGURES.setdefault(f"cmd/{DECODE}", lambda: f"```bash\n{DECODE_COMMAND}\n```")


CROSSOVER = "attention-crossover-h100"  # benchmarks/attention_crossover.py; "not yet measured" until stored
CROSSOVER_COMMAND = "python -m benchmarks.attention_crossover --json benchmarks/results/attention-crossover-h100.json"


def _crossover() -> dict | None:
    return load(CROSSOVER) if (RESULTS / f"{CROSSOVER}.json").exists() else None


def _ms(r: dict, key: str) -> str:
    return f"{r[key]:.3f}" if key in r else "—"


@figure("attention-crossover")
def attention_crossover() -> str:
    data = _crossover()
    if data is None:
        return "_Not yet measured: the command above writes `results/attention-crossover-h100.json`._"
    body = [[r["batch"], r["context"], r.get("budget", "—"), "error: " + r["error"], "", "", "", ""] if "error" in r else
            [r["batch"], r["context"], r["budget"], _ms(r, "dense_ms"), _ms(r, "sparse_ms"), f"**{r['speedup']:.2f}x**",
             _ms(r, "sparse_unfused_ms"), f"{r['unfused_speedup']:.2f}x" if "unfused_speedup" in r else "—"]
            for r in data["grid"]]
    return table(["batch", "context", "T", "dense step ms", "sparse step ms", "speedup",
                  "sparse step ms, separate K/V/label writes", "speedup, separate writes"], body)


@figure("attention-crossover-rule")
def attention_crossover_rule() -> str:
    data = _crossover()
    if data is None:
        return "_Not yet measured._"
    body = [[r["batch"], r["context"], "sparse" if r["rule_sparse"] else "dense",
             *(["error: " + r["error"], "", ""] if "error" in r else
               [_ms(r, "dense_ms"), _ms(r, "rule_ms"), f"**{r['speedup']:.3f}x**"])] for r in data["with_rule"]]
    return table(["batch", "context", "the rule's step", "dense step ms", "step under the rule ms", "speedup"], body)


@figure("attention-crossover-generate")
def attention_crossover_generate() -> str:
    data = _crossover()
    if data is None:
        return "_Not yet measured._"
    body = [[r["batch"], r["context"], "error: " + r["error"], "", "", "", "", ""] if "error" in r else
            [r["batch"], r["context"], f"{r['stock_ms']:.2f}", f"{r['cache_dense_ms']:.2f}",
             f"{r['cache_sparse_ms']:.2f}" if "cache_sparse_ms" in r else "—", f"{r['cache_rule_ms']:.2f}",
             "sparse" if r["rule_sparse"] else "dense", f"{r['speedup_vs_stock']:.2f}x"] for r in data["generate_path"]]
    return table(["batch", "context", "transformers' DynamicCache ms", "DoubleSparseCache, dense ms",
                  "DoubleSparseCache, sparse ms", "DoubleSparseCache under the rule ms", "the rule's step",
                  "speedup vs DynamicCache"], body)


def _crossover_summary() -> str:
    data = _crossover()
    if data is None:
        return "not yet measured"
    heads = data["model"]["architecture"]["num_key_value_heads"]
    found = ", ".join(f"batch {int(rows) // heads}: " + ("never up to the longest context" if context is None else
                                                         f"from {context // 1024}K")
                      for rows, context in data["rule"]["crossover"].items())
    checks = data["checks"]
    lowest = min((r for r in data["with_rule"] if "speedup" in r), key=lambda r: r["speedup"], default=None)
    low = "" if lowest is None else (f"; the lowest {lowest['speedup']:.3f}x at batch {lowest['batch']}, "
                                     f"{lowest['context'] // 1024}K ({'sparse' if lowest['rule_sparse'] else 'dense'} "
                                     "under the rule)")
    if "eager_rule" in data:
        found += "; eager (model.generate): " + ", ".join(
            f"batch {int(rows) // heads}: " + ("never up to the longest context" if context is None else
                                               f"from {context // 1024}K")
            for rows, context in data["eager_rule"]["crossover"].items())
    used = data["settings"]
    setting = (f"channels {used['channels']}, {used['labels']} labels, {used['label_bits']}-bit, "
               f"{'with' if used['position_prior'] else 'no'} position prior, T {used['tokens']}")
    return (f"setting of the run: {setting}; crossovers on {data['device']} (margin {data['margin']}): {found}. "
            f"Under the rule "
            f"{checks['at_least_dense']} of {checks['rows']} rows ≥ 1.0x dense{low}; one-launch append "
            f"{'used' if data['fused_append'] else 'not used (it differed on this GPU)'}")


FIGURES["attention.crossover-summary"] = _crossover_summary
FIGURES.setdefault(f"meta/{CROSSOVER}", lambda: "not yet measured")
FIGURES.setdefault(f"cmd/{CROSSOVER}", lambda: f"```bash\n{CROSSOVER_COMMAND}\n```")
