"""Share of each decoder layer's squared hidden-state norm held by the first token of each window (default model).

The plain relative layer error ‖f'(X) − f(X)‖² / ‖f(X)‖² weighs tokens by ‖h‖²; this shows how much of that
weight one token per window carries. Calibration windows as `compress prune` draws them (seed 0).
Usage: python -m benchmarks.first_token --out benchmarks/results/first-token.json [--nsamples 4 --seqlen 512]
       python -m benchmarks.first_token --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model


@torch.no_grad()
def main() -> None:
    from compress.calibrate.data import TextSource, calibration_tokens
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, source = None, TextSource()
        if args.tiny:
            model_dir, path = tiny_model(tmp)
            source, args.nsamples, args.seqlen = TextSource(path=path), 2, 32
        model, tokenizer, name = load_model(model_dir, "float32", "cpu")
        ids = calibration_tokens(tokenizer, source, args.nsamples, args.seqlen, seed=0)
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1:]  # after each decoder layer
    rows = []
    for layer, h in enumerate(hidden):
        norms = h.float().pow(2).sum(-1)  # windows × tokens
        rows.append({"layer": layer, "first_token_share": float(norms[:, 0].sum() / norms.sum())})
    result = {"meta": run_meta, "model": "tiny random Llama" if args.tiny else name,
              "calibration": f"{args.nsamples}x{args.seqlen} {source.describe('Austen (5 novels)')}, seed 0", "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
