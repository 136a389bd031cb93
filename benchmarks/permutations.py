"""Perplexity of the default model pruned with and without channel permutations, in one process.

Usage: python -m benchmarks.permutations --out benchmarks/results/permutations-global-wanda24.json
       [--methods wanda ria sparsegpt] [--patterns 2:4 4:8] [--kinds none heuristic learned global]
       [--global-iters 0 --global-tokens 4096 --model-steps 30 --model-windows 2]
       [--calib-seed 0 1 2 ...] [--device cuda]

With both heuristic and global, one `--permute global` run gives both rows of a draw: the heuristic row is the
model as the layer-sequential pass left it (with --global-iters 0 that is the heuristic's pruning exactly),
measured just before the model pass; the global row is the finished run. Rows of one draw are paired.
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
    parser.add_argument("--global-iters", type=int, default=0, help="--permute global: steps per decoder layer")
    parser.add_argument("--global-tokens", type=int, default=4096, help="--permute global: tokens per step")
    parser.add_argument("--model-steps", type=int, default=30, help="--permute global: model pass steps")
    parser.add_argument("--model-windows", type=int, default=2, help="--permute global: windows per model step")
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
            args.steps, args.kinds, args.model_steps = 1, ["none", "heuristic", "global"], 3
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
        from compress.permute.model_pass import ModelPassConfig

        summary["global"] = {"per_layer": GlobalConfig(steps=args.global_iters, block=args.block,
                                                       tokens=args.global_tokens, seed=args.search_seed).to_dict()
                             if args.global_iters else None,
                             "model_pass": ModelPassConfig(steps=args.model_steps, windows=args.model_windows,
                                                           block=args.block, seed=args.search_seed).to_dict()}
    print(f"dense {dense:.3f}", flush=True)

    def save(row):
        summary["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)

    kinds = [k for k in args.kinds if not (k == "heuristic" and "global" in args.kinds)]
    for calib_seed in args.calib_seed:
        calib = calibration_tokens(tokenizer, text, args.nsamples, args.seqlen, seed=calib_seed)
        for pattern, method, kind in itertools.product(args.patterns, args.methods, kinds):
            model.load_state_dict(original)
            config = prune_config(method, pattern, permute=kind, perm_steps=args.steps, perm_block_size=args.block,
                                  perm_deflate=args.deflate, perm_seed=args.search_seed,
                                  **({"perm_iters": args.global_iters, "perm_tokens": args.global_tokens,
                                      "perm_model_steps": args.model_steps, "perm_windows": args.model_windows}
                                     if kind == "global" else {}), **({"targets": args.targets} if args.targets else {}))
            base = {"pattern": pattern, "method": method, "calib_seed": calib_seed}
            started = time.perf_counter()

            def measure(result, permute: str, seconds: float) -> dict:
                ppl = perplexity(model, evaluation, args.context, args.device).perplexity
                row = {**base, "permute": permute, "ppl": round(ppl, 3), "gap": round(ppl - dense, 3),
                       "prune_s": round(seconds, 1),
                       "mean_layer_error": sum(s.relative_error for s in result.steps) / len(result.steps)}
                report_key = "global_permutation" if permute == "global" else "learned_permutation"
                kept = [g["kept"] for s in result.steps for g in s.info.get(report_key, {}).get("groups", {}).values()]
                if kept:
                    row[f"groups_kept_{permute}"] = f"{kept.count(permute)}/{len(kept)}"
                return row

            def sequential_done(result):
                if kind == "global" and "heuristic" in args.kinds:
                    row = measure(result, "heuristic" if not args.global_iters else "global-layer",
                                  time.perf_counter() - started)
                    save(row)

            result = prune_model(model, config, calib, args.device, after_layers=sequential_done)
            seconds = time.perf_counter() - started
            row = measure(result, kind, seconds)
            if result.model_pass is not None:
                keys = ("objective_start", "objective_learned", "kept", "channels_moved", "seconds", "learned_weights",
                        "candidates")  # the last two where the method learns on its own weights (SparseGPT)
                row["model_pass"] = {k: result.model_pass[k] for k in keys if k in result.model_pass}
            save(row)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
