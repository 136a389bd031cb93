"""Double Sparsity on the default model (CPU): perplexity dense vs sparse attention over many held-out windows,
with a paired 95% interval, for candidate settings at a token budget of 1/16; greedy agreement with dense.

One qk channel file (with projected labels and the position prior) is calibrated on the calibration novels
(or --channel-file reuses one); perplexity is on Persuasion (held out), window w of a context being tokens
[w·context, (w+1)·context). Every row is measured on the same windows as dense, so the comparison is paired:
per window the log perplexity ratio (sparse nll − dense nll), a t-interval over the windows of its mean,
exponentiated; with equal tokens per window the point is the ratio of the pooled perplexities.
Perplexity applies the sparse attention to every query (each position as a decode step would see it);
generation prefills densely and decodes sparsely, as the reference and SGLang run it.
The file is written after every row; --append keeps the rows of an earlier run of the same file (the runs'
meta blocks are kept in `runs`), so a grid can be measured in parts.
Usage: python -m benchmarks.attention_quality --out benchmarks/results/attention-quality.json
       python -m benchmarks.attention_quality --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model

# Candidate settings, all at T = 1/16 of the context with 4-bit labels from the qk file; a row's keys override
# BASE. The oracle chooses the same T by the exact logits: the best any label can do at that budget.
BASE = dict(mode="qk", tokens="1/16", label_bits=4, channels="1/16", labels="channels", position_prior=False,
            per_kv_head=True, sink=0, recent=0)
CANDIDATES = {
    "oracle": dict(selection="oracle"),
    "channels": dict(),
    "channels+prior-1/8": dict(channels="1/8", position_prior=True),
    "channels+prior-1/8-per-query-head": dict(channels="1/8", position_prior=True, per_kv_head=False),
    "projection+prior": dict(labels="projection", position_prior=True),
    "projection+prior-1/8": dict(channels="1/8", labels="projection", position_prior=True),
    "projection+prior-1/8-window": dict(channels="1/8", labels="projection", position_prior=True, sink=4, recent=16),
    "projection+prior-1/8-dense4": dict(channels="1/8", labels="projection", position_prior=True, dense_layers=4),
}


def setting(name: str, channel_file: str, dense_layers: int | None = None):
    """A candidate's DoubleSparsity; "default": the config's own defaults (dense_layers too, unless given)."""
    from compress.attention.config import DoubleSparsity

    if name == "default":
        return DoubleSparsity(channel_file=channel_file, **({} if dense_layers is None else {"dense_layers": dense_layers}))
    row = {**BASE, "dense_layers": 2 if dense_layers is None else dense_layers, **CANDIDATES[name]}
    row.pop("selection", None)
    return DoubleSparsity(channel_file=channel_file, **row)


def paired_interval(sparse_nll: list[float], dense_nll: list[float], level: float = 0.95) -> dict:
    """Student-t interval over windows of the mean per-window log perplexity ratio, as ratios."""
    from scipy.stats import t

    diffs = [s - d for s, d in zip(sparse_nll, dense_nll)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return {"ratio": math.exp(mean), "low": None, "high": None, "windows": n}
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    half = t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"ratio": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half), "windows": n}


def _key(row: dict) -> tuple:
    return row["name"], row["context"]


def _write(path: str, result: dict) -> None:
    folder = Path(path).absolute().parent
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
        json.dump(result, f, indent=2)
    os.chmod(f.name, 0o644)  # a temporary file is private; results are read by all
    os.replace(f.name, path)


def _file_summary(path: str) -> dict:
    from compress.attention.calibration.channels import EXTRA

    extra = json.loads(Path(path).read_text())[EXTRA]
    return {"windows": extra["windows"], "tokens": extra["tokens"], "seqlen": extra["tokens"] // extra["windows"],
            "projection": "projection" in extra, "position_prior": "position_prior" in extra}


def channel_file_for(args, model_dir, text, folder: str, stored: dict | None) -> tuple[str, dict]:
    """(--channel-file, or a qk file with projected labels calibrated into `folder`; its calibration summary)."""
    from compress.attention.calibration.jobs import calibrate_channel_file
    from compress.attention.config import ChannelCalibration

    if args.channel_file is not None:  # calibrated elsewhere: its time is not known here
        return args.channel_file, {**_file_summary(args.channel_file), "seconds": (stored or {}).get("seconds")}
    path = str(Path(folder) / "qk.json")
    started = time.perf_counter()
    calibrate_channel_file(ChannelCalibration(model=model_dir, out=path, mode="qk", text=text, nsamples=args.calib_nsamples,
                                              seqlen=args.calib_seqlen, device="cpu", projection=True))
    return path, {**_file_summary(path), "seconds": round(time.perf_counter() - started, 1)}


def measure_windows(model, ids, context: int, windows: int, settings, bos_id, oracle: bool = False) -> dict:
    """Per-window perplexity of one setting (dense if settings is None) on windows 0..windows-1 of `context`."""
    from compress.attention.evaluation.measure import sparse_perplexity

    per_window = []
    for w in range(windows):
        started = time.perf_counter()
        r = sparse_perplexity(model, ids[w * context:(w + 1) * context], context, "cpu", settings, bos_id, oracle)
        per_window.append({"nll": r["nll"], "kept_share": r.get("kept_share"), "budget": r.get("budget"),
                           "channels": r.get("channels"), "seconds": round(time.perf_counter() - started, 1)})
    return {"nll": [w["nll"] for w in per_window], "budget": per_window[0]["budget"],
            "channel_count": per_window[0]["channels"], "kept_share": per_window[0]["kept_share"] and
            sum(w["kept_share"] for w in per_window) / windows, "seconds": sum(w["seconds"] for w in per_window)}


@torch.no_grad()
def main() -> None:
    from compress.attention.evaluation.measure import greedy_agreement
    from compress.calibrate.data import TextSource, evaluation_tokens, window_bos
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--contexts", type=int, nargs="*", default=[4096, 2048])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--rows", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--dense-layers", type=int, default=2, help="for rows that do not set their own")
    parser.add_argument("--channel-file", help="a qk channel file with projected labels (else calibrated here)")
    parser.add_argument("--calib-nsamples", type=int, default=4)
    parser.add_argument("--calib-seqlen", type=int, default=8192)
    parser.add_argument("--greedy", nargs="*", default=[], choices=list(CANDIDATES), help="rows to generate with")
    parser.add_argument("--prompts", type=int, default=8, help="greedy prompts (of --prompt-tokens)")
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--append", action="store_true", help="keep the rows of an existing --out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_meta = meta()
    torch.manual_seed(0)
    old = json.loads(Path(args.out).read_text()) if args.append and Path(args.out).exists() else {}
    result = {"meta": run_meta, "runs": [*old.get("runs", []), run_meta], "model": None, "text": None,
              "calibration": old.get("calibration"), "base": BASE, "candidates": CANDIDATES,
              "interval": "paired over windows: per window the log ratio of sparse to dense perplexity; "
                          "Student-t 95% interval of its mean, exponentiated",
              "perplexity": old.get("perplexity", []), "greedy": old.get("greedy", [])}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text, source = None, None, TextSource()
        if args.tiny:
            model_dir, text = tiny_model(tmp)
            source = TextSource(path=text)
            args.contexts, args.windows, args.calib_nsamples, args.calib_seqlen = [128, 64], 2, 2, 128
            args.prompts, args.prompt_tokens, args.new_tokens, args.dense_layers = 1, 64, 8, 1
            args.rows = [r for r in args.rows if "window" not in r and "dense4" not in r]  # the tiny model: 2 layers
            args.greedy = args.greedy or ["projection+prior"]
        model, tokenizer, name = load_model(model_dir, "float32", "cpu")
        result.update(model="tiny random Llama" if args.tiny else name,
                      text="tests' text" if args.tiny else "Austen: calibration on five novels, evaluation on Persuasion")
        channel_file, result["calibration"] = channel_file_for(args, model_dir, text, tmp, result["calibration"])
        ids = evaluation_tokens(tokenizer, source)
        bos_id = window_bos(tokenizer)
        run = len(result["runs"]) - 1
        greedy: list[dict] = []

        mine: list[dict] = []

        def store(entry: dict | None) -> None:
            """Write the file with `entry`; under --append over the file as it is now (runs in parallel)."""
            if entry is not None:
                mine[:] = [r for r in mine if _key(r) != _key(entry)] + [entry]
            if args.append and Path(args.out).exists():
                now = json.loads(Path(args.out).read_text())
                result["runs"] = now.get("runs", []) + ([run_meta] if run_meta not in now.get("runs", []) else [])
                result["greedy"] = [g for g in now.get("greedy", []) if g["name"] not in {m["name"] for m in greedy}]
                result["perplexity"] = now.get("perplexity", [])
            result["greedy"] = [g for g in result["greedy"] if g not in greedy] + greedy
            for row in mine + greedy:
                row["run"] = result["runs"].index(run_meta)
            result["perplexity"] = [r for r in result["perplexity"] if _key(r) not in {_key(m) for m in mine}] + mine
            _write(args.out, result)
            if entry is not None:
                print(json.dumps({k: v for k, v in entry.items() if k != "nll"}), flush=True)

        for context in args.contexts:
            if context * args.windows > len(ids):
                raise SystemExit(f"{args.windows} windows of {context} need {context * args.windows} tokens; "
                                 f"the text has {len(ids)}")
            dense = next((r for r in result["perplexity"] if r["name"] == "dense" and r["context"] == context
                          and r["windows"] == args.windows), None)
            if dense is None:
                dense = {"name": "dense", "selection": "dense", "context": context, "windows": args.windows,
                         "run": run, **measure_windows(model, ids, context, args.windows, None, bos_id)}
                dense["perplexity"] = math.exp(sum(dense["nll"]) / args.windows)
                store(dense)
            for name in args.rows:
                settings = setting(name, channel_file, args.dense_layers)
                oracle = CANDIDATES[name].get("selection") == "oracle"
                measured = measure_windows(model, ids, context, args.windows, settings, bos_id, oracle)
                entry = {"name": name, "selection": "oracle" if oracle else "labels", "context": context,
                         "windows": args.windows, "run": run,
                         **settings.model_dump(exclude={"channel_file", "mode"}), **measured,
                         "perplexity": math.exp(sum(measured["nll"]) / args.windows),
                         "dense_perplexity": dense["perplexity"], **paired_interval(measured["nll"], dense["nll"])}
                store(entry)
        for name in args.greedy:
            settings = setting(name, channel_file, args.dense_layers)
            rows = []
            for p in range(args.prompts):
                prompt = ids[p * args.prompt_tokens:(p + 1) * args.prompt_tokens]
                rows.append(greedy_agreement(model, prompt, args.new_tokens, settings))
                print(name, rows[-1], flush=True)
            entry = {"name": name, "run": run, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                     "prompts": rows, "agreement": sum(r["agreement"] for r in rows) / len(rows),
                     "common_prefix_mean": sum(r["common_prefix"] for r in rows) / len(rows),
                     "all_equal": sum(r["agreement"] == 1.0 for r in rows)}
            greedy[:] = [g for g in greedy if g["name"] != name] + [entry]
            store(None)


if __name__ == "__main__":
    main()
