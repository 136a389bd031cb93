"""Zero-shot accuracy on the offline task persuasion_next_sentence (compress.zero_shot.next_sentence: 4 choices,
chance 25%) through lm-evaluation-harness: the default model dense, then Wanda 2:4 and SparseGPT 2:4 (each
pruned from the dense weights on the same calibration windows), every item of the task, acc and acc_norm with
lm-eval's standard errors. Needs the zeroshot extra (pip install 'compress[zeroshot]').
With --jobs 3 the three models run in three processes at once (seconds then overlap).
Usage: python -m benchmarks.zero_shot --out benchmarks/results/zero-shot.json [--nsamples 32 --seqlen 512 --threads 1 --jobs 3]
       python -m benchmarks.zero_shot --tiny --out /tmp/tiny.json   # tiny random model, a few items: a quick check
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from benchmarks._compat import prune_config
from benchmarks._meta import meta
from benchmarks._tiny import tiny_model

MODELS = [None, "wanda", "sparsegpt"]  # None: dense


@torch.no_grad()
def measure(method: str | None, args) -> dict:
    """One row: load the model (and calibrate on the same windows), prune it with `method` unless dense, score it."""
    from compress.calibrate.data import TextSource, calibration_tokens
    from compress.model.loading import load_model
    from compress.prune.apply import prune_model
    from compress.zero_shot import accuracy, next_sentence, zero_shot

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text = tiny_model(tmp) if args.tiny else (None, None)
        model, tokenizer, _ = load_model(model_dir, "float32", "cpu")
        calibration = calibration_tokens(tokenizer, TextSource(path=text), args.nsamples, args.seqlen, seed=0)
    row = {"model": "dense" if method is None else f"{method} {args.pattern}", "method": method,
           "pattern": None if method is None else args.pattern, "sparsity": 0.0, "prune_s": None}
    if method is not None:
        started = time.perf_counter()
        result = prune_model(model, prune_config(method, args.pattern), calibration, "cpu")
        row.update(sparsity=round(result.overall_sparsity, 4), prune_s=round(time.perf_counter() - started, 1))
    started = time.perf_counter()
    results = zero_shot(model, tokenizer, [next_sentence.TASK], limit=args.limit)
    row.update({k: v for k, v in accuracy(results, next_sentence.TASK).items() if k != "chance"})
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["lm_eval"] = {key: results[key] for key in ("results", "n-samples", "n-shot", "versions")}
    print(json.dumps({k: v for k, v in row.items() if k != "lm_eval"}), flush=True)
    return row


def main() -> None:
    import lm_eval

    from compress.defaults.assets import CALIBRATION_NOVELS, MODEL_NAME
    from compress.zero_shot import next_sentence

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="models measured at once, one process each")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    if args.tiny:
        args.nsamples, args.seqlen, args.limit = 4, 32, 4
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(measure, MODELS, [args] * len(MODELS)))
    else:
        rows = [measure(method, args) for method in MODELS]
    calibration = "the tests' text" if args.tiny else ", ".join(CALIBRATION_NOVELS)
    summary = {"meta": run_meta, "model": "tiny random Llama" if args.tiny else MODEL_NAME, "task": next_sentence.TASK,
               "chance": 1 / next_sentence.CHOICES, "items": rows[0]["items"], "lm_eval_version": lm_eval.__version__,
               "calibration": f"{args.nsamples} × {args.seqlen} tokens from {calibration}, seed 0", "rows": rows}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
