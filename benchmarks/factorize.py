"""FactorLLM on the default model: held-out perplexity of the dense model and of each factorized variant.

Each row splits every FFN into E·G experts (top G·k) with one split kind, fits the routers (stage A,
`steps` Adam steps per layer) on Austen's calibration windows, and measures perplexity on the first
`--eval-tokens` tokens of Persuasion (never used for calibration). A row is E:k:G:split:steps[:scale]
(scale top-k, the default, or experts: FactorLLM's ×E/k; compress/factorize/moe.py).
The default model is SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF.
Usage: python -m benchmarks.factorize --out benchmarks/results/factorize.json
       python -m benchmarks.factorize --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from benchmarks._meta import meta
from benchmarks._tiny import add_text_arguments, model_and_text

ROWS = ["4:1:1:contiguous:0", "4:1:1:contiguous:200", "4:2:1:contiguous:200", "4:1:1:random:200",
        "4:1:1:cluster:200", "4:2:1:cluster:200", "4:1:1:coactivation:200", "4:2:1:coactivation:200",
        "4:1:4:cluster:200", "4:2:4:cluster:200", "4:2:1:cluster:0", "4:1:1:cluster:200:experts",
        "4:2:1:cluster:200:experts"]
TINY_ROWS = ["4:1:1:contiguous:0", "4:2:1:cluster:20", "2:1:2:coactivation:20"]


def ffn_share(experts: int, top_k: int, granularity: int, hidden: int, intermediate: int) -> float:
    """FFN multiply-adds per token relative to the dense FFN, the router included."""
    dense = 3 * hidden * intermediate
    return (dense * top_k / experts + hidden * experts * granularity) / dense


def main() -> None:
    from compress.evaluate import perplexity
    from compress.factorize import FactorizeConfig, factorize_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", nargs="+", default=None, help="E:k:G:split:steps[:scale]")
    add_text_arguments(parser)
    args = parser.parse_args()
    run_meta = meta()
    torch.manual_seed(0)
    assets = model_and_text(args)
    model, calibration, eval_ids, context, bos = (assets[k] for k in ("model", "calibration", "eval_ids", "context", "bos"))
    nsamples, seqlen = assets["nsamples"], assets["seqlen"]
    rows = args.rows or (TINY_ROWS if args.tiny else ROWS)
    started = time.perf_counter()
    dense = perplexity(model, eval_ids, context, bos_id=bos).to_dict()
    result = {"meta": run_meta, "model": assets["source"],
              "model_note": None if args.tiny else "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF",
              "dtype": "float32", "threads": torch.get_num_threads(), "calibration_tokens": calibration.numel(),
              "nsamples": nsamples, "seqlen": seqlen, "eval_tokens": dense["tokens"], "context": context,
              "dense_ppl": dense["perplexity"], "dense_eval_seconds": round(time.perf_counter() - started, 1),
              "rows": []}
    print(json.dumps({"dense_ppl": dense["perplexity"]}), flush=True)
    hidden, intermediate = model.config.hidden_size, model.config.intermediate_size
    for spec in rows:
        experts, top_k, granularity, split, steps, *scale = spec.split(":")
        config = FactorizeConfig(experts=int(experts), top_k=int(top_k), granularity=int(granularity), split=split, router="par",
                                 steps=int(steps), scale=scale[0] if scale else "top-k")
        work = copy.deepcopy(model)
        load_before = os.getloadavg()[0]
        clock = time.perf_counter()
        done = factorize_model(work, config, calibration if config.needs_calibration() else None)
        seconds = time.perf_counter() - clock
        ppl = perplexity(work, eval_ids, context, bos_id=bos).to_dict()["perplexity"]
        infos = [s.info for s in done.steps]
        agreement = [i["held_out_agreement"] for i in infos if i.get("held_out_agreement") is not None]
        loads = [max(i["load"]) for i in infos if i.get("load")]
        row = {"row": spec, "experts": config.experts, "top_k": config.top_k, "granularity": config.granularity,
               "split": split, "steps": config.steps, "scale": config.scale, "ppl": ppl, "ppl_ratio": ppl / dense["perplexity"],
               "ffn_flops_share": ffn_share(config.experts, config.top_k, config.granularity, hidden, intermediate),
               "factorize_seconds": round(seconds, 1), "capture_seconds": round(done.capture_seconds, 1),
               "training_tokens": done.tokens,
               "held_out_agreement": sum(agreement) / len(agreement) if agreement else None,
               "chance_agreement": config.top_k / config.experts,
               "max_expert_load": max(loads) if loads else None,
               "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:  # after every row: a long run keeps what it measured
            json.dump(result, f, indent=2)
        del work


if __name__ == "__main__":
    main()
