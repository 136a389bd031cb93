"""Training-free factorize (shared neurons, carved experts, analytic router) on the default model: held-out
perplexity at each activation ratio vs dense, and each layer's expert load on the held-out text.

A row is ACTIVE[:key=value,...]: FactorizeConfig(active=ACTIVE, key=value, ...), e.g. `0.25`,
`0.5:router=par`, `0.25:shared=3,experts=13,top_k=1` (explicit S/E/k instead of the ratio's translation).
Calibration: Austen's windows (--nsamples x --seqlen); held out: the first --eval-tokens tokens of
Persuasion, windows of --context after BOS (as benchmarks/factorize.py). Load: per layer, the busiest expert's
share of the held-out picks over its fair share (1.0 = even; the bar is 2.0).
Usage: python -m benchmarks.factorize_cmoe --out benchmarks/results/factorize-cmoe.json
       python -m benchmarks.factorize_cmoe --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from benchmarks._meta import meta
from benchmarks._tiny import add_text_arguments, model_and_text

ROWS = ["0.75", "0.5", "0.25"]


def row_config(spec: str):
    from compress.factorize import FactorizeConfig

    active, _, rest = spec.partition(":")
    settings = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        settings[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    if not {"experts", "top_k", "shared"} & settings.keys():
        settings["active"] = float(active)
    return FactorizeConfig(**settings)


def main() -> None:
    from compress.evaluate import perplexity
    from compress.factorize import factorize_model
    from compress.factorize.loads import count_picks, max_load_ratio

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", nargs="+", default=ROWS, help="ACTIVE[:key=value,...]")
    parser.add_argument("--threads", type=int, default=1)
    add_text_arguments(parser)
    parser.set_defaults(eval_tokens=16384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_meta = meta()
    torch.manual_seed(0)
    assets = model_and_text(args)
    model, calibration, eval_ids, context, bos = (assets[k] for k in ("model", "calibration", "eval_ids", "context", "bos"))
    started = time.perf_counter()
    dense = perplexity(model, eval_ids, context, bos_id=bos).to_dict()
    result = {"meta": run_meta, "model": assets["source"],
              "model_note": None if args.tiny else "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF",
              "dtype": "float32", "threads": torch.get_num_threads(), "calibration_tokens": calibration.numel(),
              "nsamples": assets["nsamples"], "seqlen": assets["seqlen"], "eval_tokens": dense["tokens"],
              "context": context, "dense_ppl": dense["perplexity"],
              "dense_eval_seconds": round(time.perf_counter() - started, 1), "rows": []}
    print(json.dumps({"dense_ppl": dense["perplexity"], "eval_tokens": dense["tokens"]}), flush=True)
    for spec in args.rows:
        config = row_config(spec)
        work = copy.deepcopy(model)
        clock = time.perf_counter()
        done = factorize_model(work, config, calibration)
        seconds = time.perf_counter() - clock
        with count_picks(work) as counts:
            ppl = perplexity(work, eval_ids, context, bos_id=bos).to_dict()["perplexity"]
        loads = [round(max_load_ratio(c), 3) for c in counts.values()]
        row = {"row": spec, "config": config.model_dump(mode="json"), "active_share": config.active_share,
               "ppl": ppl, "ppl_ratio": ppl / dense["perplexity"], "factorize_seconds": round(seconds, 1),
               "max_load_ratio": max(loads) if loads else None, "layer_max_load_ratio": loads,
               "layer_held_out_counts": {name: c.tolist() for name, c in counts.items()},
               "calibration_relative_error": [s.token_error for s in done.steps]}
        result["rows"].append(row)
        print(json.dumps({k: row[k] for k in ("row", "ppl", "ppl_ratio", "max_load_ratio", "factorize_seconds")}),
              flush=True)
        with open(args.out, "w") as f:  # after every row: a long run keeps what it measured
            json.dump(result, f, indent=2)
        del work


if __name__ == "__main__":
    main()
