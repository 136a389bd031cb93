"""How good can routing be? FactorLLM's split with an oracle in place of the router, on the default model.

For every token the oracle runs all experts, takes the dense FFN output (their sum, the fold undone) and
keeps the k experts whose mean output (×fold) is closest to it: the PAR pseudo-label itself,
which the trained routers of benchmarks/factorize.py learn to predict. Its perplexity is what a router that
matched the label on every token would reach with these experts (expert weights bit-equal to slices of the
dense ones, the fold put in their down projections): it separates what routing loses from what the split itself loses.
A row is E:k:G:split[:scale] (scale top-k, the default, or experts: FactorLLM's ×E/k). Perplexity on the first `--eval-tokens` tokens of Persuasion (never used to calibrate).
Usage: python -m benchmarks.factorize_oracle --out benchmarks/results/factorize-oracle.json
       python -m benchmarks.factorize_oracle --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import torch

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model

ROWS = ["4:1:1:contiguous", "4:2:1:contiguous", "4:1:1:cluster", "4:2:1:cluster", "4:1:4:cluster", "4:2:4:cluster",
        "4:2:8:cluster", "4:3:1:cluster", "4:1:1:cluster:experts", "4:2:1:cluster:experts"]
TINY_ROWS = ["4:1:1:contiguous", "2:1:2:cluster"]


def oracle_forward(moe):
    """A forward that routes each token to its PAR pseudo-label (all experts run; for measurement only)."""
    from compress.factorize.router import par_labels

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        outs = moe.all_experts(x)  # (tokens, experts, hidden), each ×fold
        labels = par_labels(moe, x, outs.sum(1) / moe.fold)  # the dense FFN
        chosen = outs.gather(1, labels[..., None].expand(-1, -1, outs.shape[-1])).mean(1)
        return chosen.reshape(hidden_states.shape)

    return forward


def main() -> None:
    from compress.calibrate.data import TextSource, evaluation_tokens, window_bos
    from compress.evaluate import perplexity
    from compress.factorize import FactorizeConfig, factorize_model, factorized_mlps
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", nargs="+", default=None, help="E:k:G:split[:scale]")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text = tiny_model(tmp) if args.tiny else (None, None)
        model, tokenizer, source = load_model(model_dir, "float32", "cpu")
        eval_ids = evaluation_tokens(tokenizer, TextSource(path=text), args.eval_tokens)
    context = min(args.context, eval_ids.numel() // 2) if args.tiny else args.context
    bos = window_bos(tokenizer)
    dense = perplexity(model, eval_ids, context, bos_id=bos).to_dict()
    result = {"meta": run_meta, "model": "tiny random Llama" if args.tiny else source,
              "model_note": None if args.tiny else "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF",
              "dtype": "float32", "eval_tokens": dense["tokens"], "context": context, "dense_ppl": dense["perplexity"],
              "rows": []}
    for spec in args.rows or (TINY_ROWS if args.tiny else ROWS):
        experts, top_k, granularity, split, *scale = spec.split(":")
        config = FactorizeConfig(experts=int(experts), top_k=int(top_k), granularity=int(granularity), split=split, router="par",
                                 steps=0, scale=scale[0] if scale else "top-k")
        work = copy.deepcopy(model)
        factorize_model(work, config)
        for moe in factorized_mlps(work).values():
            moe.forward = oracle_forward(moe)
        clock, load_before = time.perf_counter(), os.getloadavg()[0]
        ppl = perplexity(work, eval_ids, context, bos_id=bos).to_dict()["perplexity"]
        row = {"row": spec, "experts": config.experts, "top_k": config.top_k, "granularity": config.granularity,
               "split": split, "scale": config.scale, "routing": "oracle (PAR label)", "ppl": ppl, "ppl_ratio": ppl / dense["perplexity"],
               "seconds": round(time.perf_counter() - clock, 1),
               "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
