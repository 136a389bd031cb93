"""Zero-shot accuracy on the offline task persuasion_next_sentence (compress.zero_shot.next_sentence: 4 choices,
chance 25%) through lm-evaluation-harness: the default model dense, then Wanda 2:4 and SparseGPT 2:4 (each
pruned from the dense weights on the same calibration windows), every item of the task, acc and acc_norm with
lm-eval's standard errors. Needs the zeroshot extra (pip install 'compress[zeroshot]').
Usage: python -m benchmarks.zero_shot --out benchmarks/results/zero-shot.json [--nsamples 32 --seqlen 512 --threads 1]
       python -m benchmarks.zero_shot --tiny --out /tmp/tiny.json   # tiny random model, a few items: a quick check
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from benchmarks._compat import prune_config
from benchmarks._meta import meta
from benchmarks._tiny import tiny_model

METHODS = ["wanda", "sparsegpt"]


def score(model, tokenizer, limit: int | None) -> dict:
    from compress.zero_shot import accuracy, next_sentence, zero_shot

    started = time.perf_counter()
    results = zero_shot(model, tokenizer, [next_sentence.TASK], limit=limit)
    row = {k: v for k, v in accuracy(results, next_sentence.TASK).items() if k != "chance"}
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["lm_eval"] = {key: results[key] for key in ("results", "n-samples", "n-shot", "versions")}
    return row


@torch.no_grad()
def main() -> None:
    from compress.calibrate.data import TextSource, calibration_tokens
    from compress.model.loading import load_model
    from compress.prune.apply import prune_model
    from compress.zero_shot import next_sentence

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, source = None, TextSource()
        if args.tiny:
            model_dir, path = tiny_model(tmp)
            source, args.nsamples, args.seqlen, args.limit = TextSource(path=path), 4, 32, 4
        model, tokenizer, name = load_model(model_dir, "float32", "cpu")
        calibration = calibration_tokens(tokenizer, source, args.nsamples, args.seqlen, seed=0)
    import lm_eval

    dense = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [{"model": "dense", "method": None, "pattern": None, "sparsity": 0.0, "prune_s": None,
             **score(model, tokenizer, args.limit)}]
    print(json.dumps({k: v for k, v in rows[-1].items() if k != "lm_eval"}), flush=True)
    for method in METHODS:
        model.load_state_dict(dense)
        started = time.perf_counter()
        result = prune_model(model, prune_config(method, args.pattern), calibration, "cpu")
        rows.append({"model": f"{method} {args.pattern}", "method": method, "pattern": args.pattern,
                     "sparsity": round(result.overall_sparsity, 4), "prune_s": round(time.perf_counter() - started, 1),
                     **score(model, tokenizer, args.limit)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "lm_eval"}), flush=True)
    summary = {"meta": run_meta, "model": "tiny random Llama" if args.tiny else name, "task": next_sentence.TASK,
               "chance": 1 / next_sentence.CHOICES, "items": rows[0]["items"], "lm_eval_version": lm_eval.__version__,
               "calibration": f"{args.nsamples}x{args.seqlen} {source.describe('Austen (5 novels)')}, seed 0",
               "rows": rows}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
