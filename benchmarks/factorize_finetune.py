"""FactorLLM stage B on the default model: experts and routers trained end to end (distillation from the
dense model), against the dense model fine-tuned on the same tokens, so adaptation to the text is not
counted as a gain of factorizing.

Rows: dense; dense with its MLP weights fine-tuned by next-token loss on the calibration windows (same steps,
batch, learning rate and tokens as stage B; --no-dense-finetune leaves it out); then for each E:k:G:split:
stage A only (routers fitted to PAR labels, experts bit-equal slices) and stage A + stage B
(compress/factorize/finetune.py); a row `active:A` is `compress factorize --active A` as it is by default
(shared neurons, carved experts, the analytic router, refit) before stage B. Perplexity on the
first `--eval-tokens` tokens of Persuasion (never used for calibration or training).
The default model is SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF.
Usage: python -m benchmarks.factorize_finetune --out benchmarks/results/factorize-finetune.json
       python -m benchmarks.factorize_finetune --rows active:0.25 --no-dense-finetune --lr 2e-4 \
           --out benchmarks/results/factorize-finetune-active.json
       python -m benchmarks.factorize_finetune --tiny --out /tmp/tiny.json   # tiny random model: a quick check
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

ROWS = ["4:2:1:cluster", "4:1:1:cluster"]


def main() -> None:
    from compress.evaluate import perplexity
    from compress.factorize import FactorizeConfig, factorize_model
    from compress.factorize.finetune import EndToEndTraining, teacher_targets, train_experts

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", nargs="+", default=None, help="E:k:G:split")
    parser.add_argument("--router-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60, help="stage B (and dense fine-tuning) steps")
    parser.add_argument("--batch", type=int, default=1, help="calibration windows per step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--no-dense-finetune", action="store_true", help="leave out the dense control row")
    add_text_arguments(parser)
    args = parser.parse_args()
    run_meta = meta()
    torch.manual_seed(0)
    assets = model_and_text(args)
    model, calibration, eval_ids, context, bos = (assets[k] for k in ("model", "calibration", "eval_ids", "context", "bos"))
    steps, router_steps = (4, 10) if args.tiny else (args.steps, args.router_steps)
    device = torch.device("cpu")
    settings = EndToEndTraining(steps=steps, lr=args.lr, batch=args.batch)
    measure = lambda m: perplexity(m, eval_ids, context, bos_id=bos).to_dict()["perplexity"]  # noqa: E731
    show = lambda entry: print(json.dumps(entry), flush=True)  # noqa: E731
    dense_ppl = measure(model)
    result = {"meta": run_meta, "model": assets["source"],
              "model_note": None if args.tiny else "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF",
              "dtype": "float32", "threads": torch.get_num_threads(), "calibration_tokens": calibration.numel(),
              "nsamples": assets["nsamples"], "seqlen": assets["seqlen"], "context": context, "eval_tokens": args.eval_tokens,
              "steps": steps, "batch": args.batch, "lr": args.lr, "router_steps": router_steps,
              "dense_ppl": dense_ppl, "rows": []}

    def save(row: dict) -> None:
        result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
        with open(args.out, "w") as f:  # after every row: a long run keeps what it measured
            json.dump(result, f, indent=2)

    if not args.no_dense_finetune:
        dense_control(model, calibration, steps, args, device, measure, save, show)
    teacher = teacher_targets(model, calibration, settings.distill_top, device)
    for spec in args.rows or (["4:2:1:cluster"] if args.tiny else ROWS):
        if spec.startswith("active:"):
            config = FactorizeConfig(active=float(spec.split(":")[1]))
            split = config.split
        else:
            experts, top_k, granularity, split = spec.split(":")
            config = FactorizeConfig(experts=int(experts), top_k=int(top_k), granularity=int(granularity), split=split,
                                     router="par", steps=router_steps)
        work = copy.deepcopy(model)
        load_before, clock = os.getloadavg()[0], time.perf_counter()
        factorize_model(work, config, calibration)
        base = {"experts": config.experts, "top_k": config.top_k, "granularity": config.granularity, "split": split}
        save({"row": f"{spec} router only", "kind": "router", **base, "ppl": measure(work),
              "train_seconds": round(time.perf_counter() - clock, 1), "train_tokens": calibration.numel(),
              "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]})
        load_before = os.getloadavg()[0]
        fit = train_experts(work, calibration, teacher, settings, device, show)
        save({"row": f"{spec} router+experts", "kind": "router+experts", **base, "ppl": measure(work),
              "train_seconds": round(fit.seconds, 1), "train_tokens": fit.tokens, "losses": fit.losses,
              "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]})
        del work


def dense_control(model, calibration, steps, args, device, measure, save, show) -> None:
    """The dense model's MLPs fine-tuned by next-token loss with stage B's steps, batch and learning rate."""
    from compress.factorize.finetune import EndToEndTraining, train_end_to_end
    from compress.factorize.mlp import find_gated_mlp
    from compress.model.layers import decoder_layers

    tuned = copy.deepcopy(model)
    mlp_weights = []
    for name, layer in decoder_layers(tuned):
        mlp = find_gated_mlp(layer, name)
        mlp_weights += [mlp.gate.weight, mlp.up.weight, mlp.down.weight]
    load_before = os.getloadavg()[0]
    fit = train_end_to_end(tuned, mlp_weights, calibration, None,
                           EndToEndTraining(steps=steps, lr=args.lr, batch=args.batch, distill_weight=0.0,
                                            lm_weight=1.0, par_weight=0.0, balance_weight=0.0), device, show)
    save({"row": "dense, MLP fine-tuned (next-token loss)", "kind": "dense-finetuned", "ppl": measure(tuned),
          "train_seconds": round(fit.seconds, 1), "train_tokens": fit.tokens, "losses": fit.losses,
          "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]})


if __name__ == "__main__":
    main()
