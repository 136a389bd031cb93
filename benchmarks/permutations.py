"""Perplexity of the default model pruned with and without channel permutations, in one process.

Usage: python benchmarks/permutations.py --out benchmarks/results/permutations.json
       [--methods wanda ria sparsegpt] [--patterns 2:4 4:8] [--kinds none heuristic learned]
       [--calib-seed 0 1 2 ...] [--device cuda]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch


def main() -> None:
    from compress.calibrate.data import TextSource, calibration_tokens, evaluation_tokens
    from compress.evaluate import perplexity
    from compress.jobs import _versions
    from compress.model.loading import load_model
    from compress.permute import PermuteConfig
    from compress.permute.learned import LearnConfig
    from compress.prune import parse_pattern
    from compress.prune.apply import PruneConfig, prune_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="+", default=["wanda", "ria", "sparsegpt"])
    parser.add_argument("--patterns", nargs="+", default=["2:4", "4:8"])
    parser.add_argument("--kinds", nargs="+", default=["none", "heuristic", "learned"])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--deflate", type=int, default=1)
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--calib-seed", type=int, nargs="+", default=[0],
                        help="which calibration windows are drawn; several seeds give one row set per draw")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    learn = LearnConfig(block=args.block, steps=args.steps, deflate=args.deflate, seed=args.search_seed)
    model, tokenizer, source = load_model(None, "float32", args.device)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    evaluation = evaluation_tokens(tokenizer, TextSource(), args.eval_tokens)
    dense = perplexity(model, evaluation, 1024, args.device).perplexity
    summary = {"model": source, "versions": _versions(), "dense_ppl": round(dense, 3),
               "calibration": f"{args.nsamples}x{args.seqlen} Austen (5 novels), seeds {args.calib_seed}",
               "eval": f"Persuasion, first {evaluation.numel()} tokens, context 1024",
               "learned": learn.to_dict(), "rows": []}
    print(f"dense {dense:.3f}", flush=True)
    for calib_seed in args.calib_seed:
        calib = calibration_tokens(tokenizer, TextSource(), args.nsamples, args.seqlen, seed=calib_seed)
        for pattern, method, kind in itertools.product(args.patterns, args.methods, args.kinds):
            model.load_state_dict(original)
            permute = PermuteConfig(kind, learn=learn)
            started = time.perf_counter()
            result = prune_model(model, PruneConfig(method, parse_pattern(pattern), permute=permute), calib, args.device)
            seconds = time.perf_counter() - started
            ppl = perplexity(model, evaluation, 1024, args.device).perplexity
            row = {"pattern": pattern, "method": method, "permute": kind, "ppl": round(ppl, 3),
                   "gap": round(ppl - dense, 3), "prune_s": round(seconds, 1), "calib_seed": calib_seed,
                   "mean_layer_error": sum(s.relative_error for s in result.steps) / len(result.steps)}
            kept = [g["kept"] for s in result.steps
                    for g in s.info.get("learned_permutation", {}).get("groups", {}).values()]
            if kept:
                row["groups_kept_learned"] = f"{kept.count('learned')}/{len(kept)}"
            summary["rows"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=2)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
