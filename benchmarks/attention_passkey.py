"""Double Sparsity passkey retrieval on the default model (CPU): a five-digit key at evenly spread depths of
filler text, greedy continuation dense and sparse (dense prefill, sparse decode, as the reference and SGLang run
it), for settings of benchmarks/attention_quality.py ("default": the config's defaults). One qk channel file
with projected labels is calibrated on the calibration novels (or --channel-file reuses one).
Usage: python -m benchmarks.attention_passkey --out benchmarks/results/attention-passkey.json
       python -m benchmarks.attention_passkey --tiny --out /tmp/tiny.json   # tiny random model: a quick check
The file is written after every row; --append keeps the rows of an earlier run (meta blocks in `runs`).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model
from benchmarks.attention_quality import CANDIDATES, _write, channel_file_for, setting


@torch.no_grad()
def main() -> None:
    from compress.attention.evaluation.measure import passkey_accuracy
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rows", nargs="+", default=["default"], choices=["default", *CANDIDATES])
    parser.add_argument("--channel-file", help="a qk channel file with projected labels (else calibrated here)")
    parser.add_argument("--calib-nsamples", type=int, default=4)
    parser.add_argument("--calib-seqlen", type=int, default=8192)
    parser.add_argument("--append", action="store_true", help="keep the rows of an existing --out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_meta = meta()
    old = json.loads(Path(args.out).read_text()) if args.append and Path(args.out).exists() else {}
    out = {"meta": run_meta, "runs": [*old.get("runs", []), run_meta], "rows": old.get("rows", []),
           "calibration": old.get("calibration")}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text = tiny_model(tmp) if args.tiny else (None, None)
        if args.tiny:
            args.lengths, args.trials, args.calib_nsamples, args.calib_seqlen = [96], 2, 2, 64
        model, tokenizer, name = load_model(model_dir, "float32", "cpu")
        out.update(model="tiny random Llama" if args.tiny else name,
                   model_note=None if args.tiny else "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF; trained "
                   f"to {model.config.max_position_embeddings} tokens")
        channel_file, out["calibration"] = channel_file_for(args, model_dir, text, tmp, out["calibration"])
        for length in args.lengths:
            for row in args.rows:
                settings = setting(row, channel_file, 1 if args.tiny else None)
                clock = time.perf_counter()

                def store(result: dict) -> None:  # after every trial: a stopped run keeps the trials it ran
                    entry = {"name": row, "run": len(out["runs"]) - 1, **settings.model_dump(exclude={"channel_file"}),
                             **result, "seconds": round(time.perf_counter() - clock, 1)}
                    out["rows"] = [r for r in out["rows"] if (r["name"], r["length"]) != (row, length)] + [entry]
                    _write(args.out, out)
                    print(json.dumps(entry), flush=True)

                passkey_accuracy(model, tokenizer, length, args.trials, settings, on_trial=store)


if __name__ == "__main__":
    main()
