"""Double Sparsity on the default model (CPU): perplexity dense vs sparse attention on long Austen windows,
greedy agreement with dense over generated tokens, passkey retrieval.

Channel files are calibrated first (modes qk, q, k) on the calibration novels; perplexity is on Persuasion
(held out). The qk file also carries projected labels (--projection), fitted on windows as long as the
longest context measured (they do not carry over to positions beyond their calibration windows), and the
position prior every file records. Perplexity applies the sparse attention to every query (each position as a decode step would see
it); generation prefills densely and decodes sparsely, as the reference and SGLang run it.
Usage: python -m benchmarks.attention_quality --out benchmarks/results/attention-quality.json
       python -m benchmarks.attention_quality --tiny --out /tmp/tiny.json   # tiny random model: a quick check
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


def grid(fraction: str, sink: int = 4, recent: int = 16) -> list[dict]:
    """The rows measured at one context: (channels, tokens) budgets, modes, label bits, per-head channel sets,
    a recent window inside T, the oracle and sink+recent at the same T; then the position prior and projected
    labels (alone, with the window, with the prior; the last at three budgets)."""
    rows = [dict(mode="qk", channels=f, tokens=f) for f in ("1/8", "1/16", "1/32")]
    rows += [dict(mode="qk", channels=fraction, tokens="top-p:0.95"),
             dict(mode="q", channels=fraction, tokens=fraction), dict(mode="k", channels=fraction, tokens=fraction),
             dict(mode="qk", channels=fraction, tokens=fraction, label_bits=16),
             dict(mode="qk", channels=fraction, tokens=fraction, per_kv_head=False),
             dict(mode="qk", channels=fraction, tokens=fraction, sink=sink, recent=recent),
             dict(mode="qk", channels="1", tokens=fraction, selection="oracle"),
             dict(mode="qk", channels="1", tokens=fraction, selection="sink+recent")]
    rows += [dict(mode="qk", channels=fraction, tokens=fraction, position_prior=True),
             dict(mode="qk", channels=fraction, tokens=fraction, labels="projection"),
             dict(mode="qk", channels=fraction, tokens=fraction, labels="projection", sink=sink, recent=recent)]
    rows += [dict(mode="qk", channels=f, tokens=f, labels="projection", position_prior=True) for f in ("1/8", "1/16", "1/32")]
    return rows


LONG_ROWS = [dict(mode="qk", channels="1/16", tokens="1/16"),
             dict(mode="qk", channels="1/16", tokens="1/16", sink=4, recent=16),
             dict(mode="qk", channels="1/16", tokens="1/16", position_prior=True),
             dict(mode="qk", channels="1/16", tokens="1/16", labels="projection"),
             dict(mode="qk", channels="1/16", tokens="1/16", labels="projection", position_prior=True)]
BEST = dict(mode="qk", channels="1/16", tokens="1/16", labels="projection", position_prior=True)


def settings_for(row: dict, files: dict, context: int, dense_layers: int = 2):
    from fractions import Fraction

    from compress.attention.config import DoubleSparsity

    values = dict(channel_file=files[row["mode"]], channels=row["channels"], tokens=row["tokens"],
                  label_bits=row.get("label_bits", 4), dense_layers=dense_layers, sink=row.get("sink", 0),
                  recent=row.get("recent", 0), per_kv_head=row.get("per_kv_head", True),
                  labels=row.get("labels", "channels"), position_prior=row.get("position_prior", False))
    if row.get("selection") == "sink+recent":  # the same T, all of it sink (4) and the most recent tokens
        budget = max(1, round(Fraction(row["tokens"]) * context))
        values.update(tokens=str(budget), sink=4, recent=budget - 4)
    return DoubleSparsity(**values)


@torch.no_grad()
def main() -> None:
    from compress.attention.config import ChannelCalibration
    from compress.attention.calibration.jobs import calibrate_channel_file
    from compress.attention.evaluation.measure import greedy_agreement, passkey_accuracy, sparse_perplexity
    from compress.calibrate.data import TextSource, evaluation_tokens, window_bos
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--context", type=int, default=2048, help="context of the full grid")
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--long-context", type=int, default=4096, help="dense and qk 1/16 (plain, and with a recent window)")
    parser.add_argument("--calib-nsamples", type=int, default=4)
    parser.add_argument("--calib-seqlen", type=int, default=2048, help="modes q and k; qk: the longer of this "
                        "and --long-context")
    parser.add_argument("--prompts", type=int, default=2, help="greedy agreement prompts (of --context tokens)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--passkey", type=int, nargs="*", default=[4096])
    parser.add_argument("--passkey-trials", type=int, default=4)
    parser.add_argument("--dense-layers", type=int, default=2)
    parser.add_argument("--sink", type=int, default=4, help="for the rows with a sink/recent window inside T")
    parser.add_argument("--recent", type=int, default=16)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text, source = None, None, TextSource()
        if args.tiny:
            model_dir, text = tiny_model(tmp)
            source = TextSource(path=text)
            args.context, args.windows, args.long_context, args.calib_nsamples, args.calib_seqlen = 64, 1, 128, 2, 64
            args.prompts, args.new_tokens, args.passkey, args.passkey_trials = 1, 8, [96], 1
            args.dense_layers, args.sink, args.recent = 1, 1, 2  # the tiny model has two layers; T is 4
        model, tokenizer, name = load_model(model_dir, "float32", "cpu")
        files, calibration = {}, {}
        for mode in ("qk", "q", "k"):
            files[mode] = str(Path(tmp) / f"{mode}.json")
            started = time.perf_counter()
            seqlen = max(args.calib_seqlen, args.long_context) if mode == "qk" else args.calib_seqlen
            calibration[mode] = calibrate_channel_file(ChannelCalibration(
                model=model_dir, out=files[mode], mode=mode, text=text, nsamples=args.calib_nsamples,
                seqlen=seqlen, device="cpu", projection=mode == "qk"))
            calibration[mode]["seconds"] = time.perf_counter() - started
            print(calibration[mode], flush=True)
        ids = evaluation_tokens(tokenizer, source)
        bos_id = window_bos(tokenizer)
        rows = []

        def measure(context: int, windows: int, row: dict | None) -> None:
            span = ids[: context * windows]
            settings = None if row is None else settings_for(row, files, context + (bos_id is not None), args.dense_layers)
            oracle = row is not None and row.get("selection") == "oracle"
            result = sparse_perplexity(model, span, context, "cpu", settings, bos_id, oracle)
            asked = {} if row is None else {"mode": row["mode"], "channels_asked": row["channels"],
                                            "tokens_asked": row["tokens"], "label_bits": row.get("label_bits", 4),
                                            "sink": settings.sink, "recent": settings.recent,
                                            "per_kv_head": settings.per_kv_head, "labels": settings.labels,
                                            "position_prior": settings.position_prior}
            entry = {"context": context, "windows": windows, "selection": "dense" if row is None else
                     row.get("selection", "labels"), **asked, **result}
            rows.append(entry)
            print(json.dumps(entry), flush=True)

        measure(args.context, args.windows, None)
        for row in grid("1/16", args.sink, args.recent):
            measure(args.context, args.windows, row)
        measure(args.long_context, 1, None)
        for row in LONG_ROWS:
            measure(args.long_context, 1, {**row, **({"sink": args.sink, "recent": args.recent} if row.get("sink") else {})})

        qk = settings_for(dict(mode="qk", channels="1/16", tokens="1/16"), files, 0, args.dense_layers)
        recent = qk.model_copy(update={"sink": args.sink, "recent": args.recent})
        best = settings_for(BEST, files, 0, args.dense_layers)
        agreement = []
        for p in range(args.prompts):
            prompt = ids[p * args.context: (p + 1) * args.context]
            for settings in (qk, recent, best):
                agreement.append({"prompt_tokens": args.context, "sink": settings.sink, "recent": settings.recent,
                                  "labels": settings.labels, "position_prior": settings.position_prior,
                                  **greedy_agreement(model, prompt, args.new_tokens, settings)})
                print(agreement[-1], flush=True)
        passkey = []
        for length in args.passkey:
            for settings in (qk, best):
                passkey.append({"labels": settings.labels, "position_prior": settings.position_prior,
                                **passkey_accuracy(model, tokenizer, length, args.passkey_trials, settings)})
                print(passkey[-1], flush=True)
    result = {"meta": run_meta, "model": "tiny random Llama" if args.tiny else name,
              "text": "tests' text" if args.tiny else "Austen: calibration on five novels, evaluation on Persuasion",
              "calibration": calibration, "perplexity": rows,
              "dense_layers": args.dense_layers,
              "greedy": {"settings": "qk, 1/16 channels, 1/16 tokens, 4-bit labels; rows: sink/recent, labels "
                                     "(channels or projection), position prior", "rows": agreement},
              "passkey": {"settings": "qk, 1/16 channels, 1/16 tokens, 4-bit labels; rows: labels, position prior",
                          "rows": passkey}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
