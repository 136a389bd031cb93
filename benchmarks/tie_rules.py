"""How much the choices among equal scores and SparseGPT's unstructured mask rule move perplexity.

The default model's weights are dequantized 4-bit values, so magnitude scores tie often (results/ties.json);
which weight of a tied pair survives is a choice. Rows: magnitude 2:4 with ties kept at the lower index
(our documented rule) and at the higher index (its mirror), and SparseGPT 50% unstructured with the
row rule (default) and the block rule (one threshold per column block, as the reference code).
Usage: python -m benchmarks.tie_rules --out benchmarks/results/tie-rules.json
       python -m benchmarks.tie_rules --tiny --out /tmp/tiny.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model

ROWS = [("magnitude", "2:4", "lower"), ("magnitude", "2:4", "higher"),
        ("sparsegpt", "0.5", "row"), ("sparsegpt", "0.5", "block")]


@contextmanager
def ties_to_higher_index():
    """Every mask keeps the higher index among equal scores while the block runs."""
    import compress.pattern as pattern

    lower = pattern.keep_top
    pattern.keep_top = lambda score, k: lower(score.flip(-1), k).flip(-1)
    try:
        yield
    finally:
        pattern.keep_top = lower


def main() -> None:
    from compress.calibrate.data import TextSource, calibration_tokens, evaluation_tokens
    from compress.evaluate import perplexity
    from compress.model.loading import load_model
    from compress.prune.apply import PruneConfig, prune_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="tiny random model and text: a quick check")
    args = parser.parse_args()
    run_meta = meta()
    model_dir, text = (None, None)
    if args.tiny:
        model_dir, text = tiny_model(tempfile.mkdtemp())
        args.nsamples, args.seqlen, args.eval_tokens, args.context = 4, 32, 512, 64
    source = TextSource(path=text)
    model, tokenizer, resolved = load_model(model_dir, "float32", "cpu")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = calibration_tokens(tokenizer, source, args.nsamples, args.seqlen, 0)
    held_out = evaluation_tokens(tokenizer, source, args.eval_tokens)
    dense = perplexity(model, held_out, args.context)
    rows = []
    for method, pattern, rule in ROWS:
        model.load_state_dict(original)
        nm = ":" in pattern
        config = PruneConfig(method=method, pattern=pattern if nm else None, sparsity=None if nm else float(pattern),
                             mask_rule=rule if method == "sparsegpt" else "row")
        started = time.perf_counter()
        with ties_to_higher_index() if rule == "higher" else _nothing():
            result = prune_model(model, config, calibration)
        ppl = perplexity(model, held_out, args.context)
        rows.append({"method": method, "pattern": pattern, "rule": rule, "perplexity": ppl.perplexity,
                     "sparsity": result.overall_sparsity, "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"meta": run_meta, "model": resolved, "dense_ppl": dense.perplexity,
               "calibration": {"nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0},
               "eval": {"tokens": dense.tokens, "context": args.context}, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)


@contextmanager
def _nothing():
    yield


if __name__ == "__main__":
    main()
