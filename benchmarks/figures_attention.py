"""BENCHMARKS.md's Double Sparsity tables and figures, from benchmarks/results/attention-*.json (see render.py)."""
from __future__ import annotations

from benchmarks._meta import invocation
from benchmarks.figures import FIGURES, RESULTS, figure, load, pct, table, verdict

QUALITY = "attention-quality"
PASSKEY = "attention-passkey"
KERNELS = "attention-kernels-h200"
LABEL_SCALE_BYTES = 4  # a label's float16 min and step, per token and KV head (the kernels' 4-bit format)


def _default(r: dict) -> bool:
    """A row measured with the config's default setting (compress.attention.defaults)."""
    from compress.attention import defaults as d

    return (r["selection"] == "labels" and r["channels"] == d.CHANNELS and r["tokens"] == d.TOKENS
            and r["labels"] == d.LABELS and r["position_prior"] == d.POSITION_PRIOR and r["label_bits"] == d.LABEL_BITS
            and r["dense_layers"] == d.DENSE_LAYERS and r["per_kv_head"] == d.PER_KV_HEAD and not r["sink"]
            and not r["recent"])


def _label(r: dict) -> str:
    if r["selection"] == "oracle":
        return "oracle: exact top-T by the true logits"
    extra = "" if r["per_kv_head"] or r["labels"] == "projection" else ", a channel set per query head"
    extra += ", position prior" if r["position_prior"] else ""
    extra += f", {r['sink']} sink + {r['recent']} recent inside T" if r["sink"] or r["recent"] else ""
    extra += f", first {r['dense_layers']} layers dense" if r["dense_layers"] != 2 else ""
    kind = "projected labels" if r["labels"] == "projection" else "heavy-channel labels"
    return f"{'**default**: ' if _default(r) else ''}{kind}{extra}"


def _change(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f}%"


def _interval(r: dict) -> str:
    return f"{_change(r['ratio'])} ({_change(r['low'])} to {_change(r['high'])})"


@figure("attention-quality")
def attention_quality() -> str:
    body = []
    order = {"dense": 0, "oracle": 1}
    for r in sorted(load(QUALITY)["perplexity"], key=lambda r: (-r["context"], order.get(r["name"], 2))):
        if r["selection"] == "dense":
            body.append([r["context"], r["windows"], "dense", "—", "—", "—", f"{r['perplexity']:.2f}", "—", "100%"])
            continue
        labelled = r["selection"] == "labels"
        count = r["channel_count"]
        body.append([r["context"], r["windows"], _label(r), f"{r['channels']} ({count})" if labelled else "—",
                     f"{count * r['label_bits'] / 8 + LABEL_SCALE_BYTES:g}" if labelled else "—", f"{r['tokens']} ({r['budget']})",
                     f"{r['perplexity']:.2f}", _interval(r), pct(r["kept_share"])])
    return table(["context", "windows", "selection", "label channels (count)", "label bytes per token and KV head",
                  "tokens (T)", "perplexity", "vs dense (95% interval)", "past tokens read"], body)


def _defaults() -> list[dict]:
    return sorted((r for r in load(QUALITY)["perplexity"] if _default(r)), key=lambda r: -r["context"])


def _at(rows: list[dict]) -> str:
    return " and ".join(f"{_interval(r)} at {r['context']} tokens ({r['windows']} windows)" for r in rows)


def _target() -> str:
    rows = _defaults()
    assert rows, "no row of attention-quality.json measured the default setting"

    def one(r: dict) -> str:
        if r["high"] <= 1.05:
            return "**met**"
        return "**met by the point estimate only**" if r["ratio"] <= 1.05 else "**missed**"

    return " and ".join(f"{one(r)} at {r['context']} tokens" for r in rows)


def _setting_text() -> str:
    from compress.attention import defaults as d

    return (f"{'rank-r projected labels' if d.LABELS == 'projection' else 'heavy-channel labels'} with r = {d.CHANNELS} of "
            f"head_dim, {d.LABEL_BITS}-bit{', with the position prior' if d.POSITION_PRIOR else ''}, "
            f"T = {d.TOKENS} of the context, the first {d.DENSE_LAYERS} layers dense")


def _bytes_limit() -> str:
    """Label bytes and the bytes-read limit of the default vs the paper's 1/16 heavy channels, per head_dim."""
    from fractions import Fraction

    from compress.attention import defaults as d

    def limit(head_dim: int, channels: str) -> tuple[float, float]:
        label = Fraction(channels) * head_dim * d.LABEL_BITS / 8 + LABEL_SCALE_BYTES
        kv = 2 * 2 * head_dim  # float16 K and V
        return float(label), kv / float(label + kv * Fraction(d.TOKENS))

    parts = []
    for head_dim in (64, 128):
        (ours, ours_limit), (paper, paper_limit) = limit(head_dim, d.CHANNELS), limit(head_dim, "1/16")
        parts.append(f"at head_dim {head_dim} {ours:g} label bytes per token and KV head (1/16 of the channels: "
                     f"{paper:g}), a bytes-read limit of {ours_limit:.1f}x dense ({paper_limit:.1f}x)")
    return "; ".join(parts)


def _runs_block(stem: str) -> str:
    """Every run that wrote the file's rows (measured in parts, some in parallel), one command a line."""
    return "```bash\n" + "\n".join(invocation(m["command"]) for m in load(stem)["runs"]) + "\n```"


FIGURES["cmd/attention-quality"] = lambda: _runs_block(QUALITY)
FIGURES["cmd/attention-passkey"] = lambda: _runs_block(PASSKEY)
FIGURES["attention.bytes-limit"] = _bytes_limit
FIGURES["attention.default"] = _setting_text
FIGURES["attention.default-quality"] = lambda: _at(_defaults())
FIGURES["attention.target-default"] = _target
FIGURES["attention.oracle"] = lambda: _at(sorted((r for r in load(QUALITY)["perplexity"] if r["selection"] == "oracle"),
                                                 key=lambda r: -r["context"]))
FIGURES["attention.interval"] = lambda: load(QUALITY)["interval"]
FIGURES["attention.dense4"] = lambda: _at(sorted((r for r in load(QUALITY)["perplexity"]
                                                  if r["name"] == "projection+prior-1/8-dense4"), key=lambda r: -r["context"]))


def _name_text(name: str) -> str:
    rows = [r for r in load(QUALITY)["perplexity"] if r["name"] == name]
    return _label(rows[0]) if rows else name


FIGURES["attention.greedy"] = lambda: "; ".join(
    f"{_name_text(g['name'])}: {pct(g['agreement'])} of tokens equal, common prefix {g['common_prefix_mean']:.1f} of "
    f"{g['new_tokens']} on average, {g['all_equal']} of {len(g['prompts'])} prompts identical"
    for g in load(QUALITY)["greedy"])


def _passkey_label(r: dict) -> str:
    return _label({**r, "selection": "labels"})


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
KERNELS_DEFAULT = "attention-kernels-default-h100"


def _default_target() -> list[dict]:
    return [r for r in load(KERNELS_DEFAULT)["rows"]
            if r["batch"] == 16 and r["context"] == 65536 and r["dtype"] == "float16"]


@figure("attention-kernels-default")
def attention_kernels_default() -> str:
    body = [[r["shape"], r["batch"], r["context"], f"{r['channels']} of {r['head_dim']}", f"{r['dense_ms']:.4f}",
             f"{r['sparse_prior_ms']:.4f}", f"**{r['dense_ms'] / r['sparse_prior_ms']:.2f}x**", f"{r['speedup']:.2f}x",
             f"{r['bytes_limit_speedup']:.2f}x"] for r in load(KERNELS_DEFAULT)["rows"]]
    return table(["shape", "batch", "context", "label channels", "dense SDPA ms", "default setting ms",
                  "speedup (the default: with the position prior)", "speedup without the prior",
                  "bytes-read limit"], body)


FIGURES["attention.default-kernel-target"] = lambda: verdict(
    [r["dense_ms"] / r["sparse_prior_ms"] for r in _default_target()], 8.0)
FIGURES["attention.default-kernel-speedups"] = lambda: ", ".join(
    f"{r['shape']} {r['dense_ms'] / r['sparse_prior_ms']:.2f}x (without the prior {r['speedup']:.2f}x)"
    for r in _default_target())
FIGURES["attention.default-kernel-checks"] = lambda: (
    f"{sum(_passed(c) for c in load(KERNELS_DEFAULT)['checks'])} of {len(load(KERNELS_DEFAULT)['checks'])} checks "
    f"at batch 16, largest output error {max(c['output_error'] for c in load(KERNELS_DEFAULT)['checks']):.1e}")
FIGURES["attention.kernel-checks"] = lambda: (
    f"{sum(_passed(c) for c in load(KERNELS)['checks'])} of "
    f"{len(load(KERNELS)['checks'])} checks, largest output error "
    f"{max(c['output_error'] for c in load(KERNELS)['checks']):.1e}")



def _passkey_target() -> str:
    parts = []
    for r in load(PASSKEY)["rows"]:
        met = r["sparse"] >= 0.9 and r["trials"] >= 20
        few = "" if r["trials"] >= 20 else f", {r['trials']} trials"
        parts.append(f"at {r['length']} tokens **{'met' if met else 'missed'}** (sparse {pct(r['sparse'])}, "
                     f"dense {pct(r['dense'])}{few})")
    return "; ".join(parts)


FIGURES["attention.passkey-target"] = _passkey_target


@figure("attention-passkey")
def attention_passkey() -> str:
    body = [[r["length"], _passkey_label(r), f"{r['trials']} of {r['trials_planned']}", pct(r["dense"]), pct(r["sparse"]),
             f"{r['seconds']:.0f}"] for r in load(PASSKEY)["rows"]]
    return table(["prompt tokens", "Double Sparsity", "trials run", "dense found", "sparse found", "seconds"], body)


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
