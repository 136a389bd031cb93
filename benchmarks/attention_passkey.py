"""Double Sparsity passkey retrieval on the default model (CPU) at 4K and 8K tokens: a five-digit key hidden at
evenly spread depths of Austen text, greedy continuation dense and sparse (dense prefill, sparse decode, as
the reference and SGLang run it). Channels calibrated (qk) on the calibration novels.
Usage: python -m benchmarks.attention_passkey --out benchmarks/results/attention-passkey.json
       python -m benchmarks.attention_passkey --tiny --out /tmp/tiny.json   # tiny random model: a quick check
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
from benchmarks.attention_quality import settings_for

ROWS = [dict(mode="qk", channels="1/16", tokens="1/16"), dict(mode="qk", channels="1/16", tokens="1/16", sink=4, recent=16),
        dict(mode="qk", channels="1/8", tokens="1/8")]


@torch.no_grad()
def main() -> None:
    from compress.attention.config import ChannelCalibration
    from compress.attention.calibration.jobs import calibrate_channel_file
    from compress.attention.evaluation.measure import passkey_accuracy
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--calib-nsamples", type=int, default=4)
    parser.add_argument("--calib-seqlen", type=int, default=2048)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text = tiny_model(tmp) if args.tiny else (None, None)
        if args.tiny:
            args.lengths, args.trials, args.calib_nsamples, args.calib_seqlen = [96], 1, 2, 64
        model, tokenizer, name = load_model(model_dir, "float32", "cpu")
        files = {"qk": str(Path(tmp) / "qk.json")}
        started = time.perf_counter()
        calibration = calibrate_channel_file(ChannelCalibration(
            model=model_dir, out=files["qk"], mode="qk", text=text, nsamples=args.calib_nsamples,
            seqlen=args.calib_seqlen, device="cpu"))
        calibration = {"windows": calibration["windows"], "tokens": calibration["tokens"],
                       "seconds": round(time.perf_counter() - started, 1)}
        rows = []
        for length in args.lengths:
            for row in ROWS:
                if args.tiny and row.get("sink"):  # a budget of a few tokens holds no 4 + 16
                    row = {**row, "sink": 1, "recent": 2}
                clock = time.perf_counter()
                result = passkey_accuracy(model, tokenizer, length, args.trials, settings_for(row, files, 0))
                rows.append({**row, "sink": row.get("sink", 0), "recent": row.get("recent", 0), **result,
                             "seconds": round(time.perf_counter() - clock, 1)})
                print(json.dumps(rows[-1]), flush=True)
    out = {"meta": run_meta, "model": "tiny random Llama" if args.tiny else name,
           "model_note": None if args.tiny else "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF",
           "calibration": calibration, "label_bits": 4, "dense_layers": 2, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
