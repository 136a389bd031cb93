"""Perplexity of the default model pruned with and without channel permutations, in one process.

Usage: python -m benchmarks.permutations --out benchmarks/results/permutations.json
       [--methods wanda ria sparsegpt] [--patterns 2:4 4:8] [--kinds none heuristic learned global]
       [--global-iters 40 --global-tokens 4096]
       [--calib-seed 0 1 2 ...] [--device cuda]
       python -m benchmarks.permutations --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time

import torch

from benchmarks._compat import learn_config, prune_config
from benchmarks._meta import meta
from benchmarks._tiny import tiny_model


def main() -> None:
    from compress.calibrate.data import TextSource
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="+", default=["wanda", "ria", "sparsegpt"])
    parser.add_argument("--patterns", nargs="+", default=["2:4", "4:8"])
    parser.add_argument("--kinds", nargs="+", default=["none", "heuristic", "learned"])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--deflate", type=int, default=1)
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--targets", default=None, help="regex of the Linears to prune (default: all)")
    parser.add_argument("--global-iters", type=int, default=40, help="--permute global: steps per decoder layer")
    parser.add_argument("--global-tokens", type=int, default=4096, help="--permute global: tokens per step")
    parser.add_argument("--calib-seed", type=int, nargs="+", default=[0],
                        help="which calibration windows are drawn; several seeds give one row set per draw")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random model and text, Wanda 2:4, few tokens")
    args = parser.parse_args()
    run_meta = meta()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text = None, TextSource()
        if args.tiny:
            model_dir, path = tiny_model(tmp)
            text = TextSource(path=path)
            args.methods, args.patterns, args.nsamples, args.seqlen, args.eval_tokens, args.context = (
                ["wanda"], ["2:4"], 4, 32, 256, 64)
            args.steps, args.kinds = 1, ["none", "learned"]
        model, tokenizer, source = load_model(model_dir, "float32", args.device)
        run(args, run_meta, model, tokenizer, source if not args.tiny else "tiny random Llama", text)


def run(args, run_meta, model, tokenizer, source, text) -> None:
    from compress.calibrate.data import calibration_tokens, evaluation_tokens
    from compress.evaluate import perplexity
    from compress.prune.apply import prune_model

    learn = learn_config(args.steps, args.block, args.deflate, args.search_seed)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    evaluation = evaluation_tokens(tokenizer, text, args.eval_tokens)
    dense = perplexity(model, evaluation, args.context, args.device).perplexity
    summary = {"meta": run_meta, "model": source, "versions": run_meta["versions"], "dense_ppl": round(dense, 3),
               "calibration": f"{args.nsamples}x{args.seqlen} {text.describe('Austen (5 novels)')}, seeds {args.calib_seed}",
               "eval": f"{text.describe('Persuasion')}, first {evaluation.numel()} tokens, context {args.context}",
               "learned": learn.to_dict(), "rows": [], **({"targets": args.targets} if args.targets else {})}
    if "global" in args.kinds:
        from compress.permute import GlobalConfig

        summary["global"] = GlobalConfig(steps=args.global_iters, block=args.block, tokens=args.global_tokens,
                                         seed=args.search_seed).to_dict()
    print(f"dense {dense:.3f}", flush=True)
    for calib_seed in args.calib_seed:
        calib = calibration_tokens(tokenizer, text, args.nsamples, args.seqlen, seed=calib_seed)
        for pattern, method, kind in itertools.product(args.patterns, args.methods, args.kinds):
            model.load_state_dict(original)
            config = prune_config(method, pattern, permute=kind, perm_steps=args.steps, perm_block_size=args.block,
                                  perm_deflate=args.deflate, perm_seed=args.search_seed,
                                  **({"perm_iters": args.global_iters, "perm_tokens": args.global_tokens}
                                     if kind == "global" else {}), **({"targets": args.targets} if args.targets else {}))
            started = time.perf_counter()
            result = prune_model(model, config, calib, args.device)
            seconds = time.perf_counter() - started
            ppl = perplexity(model, evaluation, args.context, args.device).perplexity
            row = {"pattern": pattern, "method": method, "permute": kind, "ppl": round(ppl, 3),
                   "gap": round(ppl - dense, 3), "prune_s": round(seconds, 1), "calib_seed": calib_seed,
                   "mean_layer_error": sum(s.relative_error for s in result.steps) / len(result.steps)}
            report_key = "global_permutation" if kind == "global" else "learned_permutation"
            kept = [g["kept"] for s in result.steps for g in s.info.get(report_key, {}).get("groups", {}).values()]
            if kept:
                row[f"groups_kept_{kind}"] = f"{kept.count(kind)}/{len(kept)}"
            summary["rows"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=2)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
