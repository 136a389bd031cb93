"""`compress factorize`: a one-stage recipe (factorize, then eval and a stock MoE export when asked) from flags."""
from __future__ import annotations

from typing import List, Optional

import typer

from compress.cli.common import exit_codes
from compress.cli.run import GATE_HELP

__all__ = ["factorize", "EXAMPLES"]

EXAMPLES = """
Examples:

  compress factorize --experts 4 --top-k 1 --eval                 # default model and text, 1R4E1K

  compress factorize ./Llama-3-8B --experts 4 --top-k 2 --split cluster --out ./llama-4e2k   # Mixtral checkpoint

  compress factorize --experts 16 --top-k 4 --steps 0 --eval       # split only, zero router

  compress factorize ./model --experts 4 --top-k 1 --dry-run > recipe.yaml   # the same job as a recipe
"""


def factorize(
    model: Optional[str] = typer.Argument(None, help="HF model directory, .gguf file or hub id; default SmolLM2-135M-Instruct (dequantized Q4_1 GGUF)."),
    experts: int = typer.Option(4, help="E: experts per FFN (a power of two keeps the k = E case exact)."),
    top_k: int = typer.Option(1, help="k: experts each token runs (top-k of the router's softmax, renormalised)."),
    granularity: int = typer.Option(1, help="G: cut each expert into G (G·E experts, top G·k)."),
    split: str = typer.Option("contiguous", help="contiguous | random | cluster (k-means on gate/up rows) | coactivation."),
    scale: str = typer.Option("top-k", help="Factor folded into each expert's down projection: top-k (k: the chosen experts' neurons add up as in the dense FFN) | experts (E: FactorLLM's ×E/k)."),
    train: str = typer.Option("router", help="router: fit each layer's router to PAR pseudo-labels (experts stay slices of the dense FFN) | router+experts: then train experts and routers end to end, distilling the dense model."),
    expert_steps: int = typer.Option(100, help="router+experts: Adam steps over batches of calibration windows."),
    expert_lr: float = typer.Option(1e-4, help="router+experts: learning rate (cosine schedule)."),
    expert_batch: int = typer.Option(4, help="router+experts: calibration windows per step."),
    distill_top: int = typer.Option(64, help="router+experts: the dense model's top-K next-token probabilities kept as the target."),
    distill_weight: float = typer.Option(1.0, help="router+experts: weight of the distillation loss."),
    lm_weight: float = typer.Option(0.0, help="router+experts: weight of the next-token loss on the calibration text."),
    steps: int = typer.Option(200, help="Router Adam steps per layer (0: split only, zero router)."),
    lr: float = typer.Option(1e-3, help="Router learning rate (cosine schedule)."),
    batch_tokens: int = typer.Option(1024, help="Tokens per router step."),
    par_weight: float = typer.Option(0.05, help="Weight of the PAR pseudo-label loss."),
    balance_weight: float = typer.Option(0.01, help="Weight of the load-balance loss."),
    text: Optional[str] = typer.Option(None, help="Calibration text: a .txt/.md file or .jsonl (see --text-field)."),
    dataset: Optional[str] = typer.Option(None, help="Calibration dataset NAME[:CONFIG][:SPLIT] (needs compress[datasets])."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl records or dataset rows."),
    nsamples: int = typer.Option(16, help="Calibration sequences."),
    seqlen: int = typer.Option(512, help="Tokens per calibration sequence (capped at the model's maximum)."),
    seed: int = typer.Option(0, help="Seed for the calibration windows, random splits, k-means and router batches."),
    calib_batch: int = typer.Option(0, help="Calibration sequences per forward (0: about 16k tokens)."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (auto: float32 on CPU)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu. The model stays in CPU memory; one layer at a time moves to the GPU."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Write a stock MoE checkpoint here (Llama/Mistral -> Mixtral, Qwen2 -> Qwen2-MoE, Qwen3 -> Qwen3-MoE) with compression.json."),
    force: bool = typer.Option(False, help="Replace --out if it holds an earlier output of compress (marked so in its compression.json)."),
    eval: bool = typer.Option(False, "--eval", help="Measure perplexity before and after on held-out text."),
    eval_text: Optional[str] = typer.Option(None, help="Held-out text file (default: Austen's Persuasion, never used for calibration)."),
    eval_dataset: Optional[str] = typer.Option(None, help="Held-out dataset NAME[:CONFIG][:SPLIT]."),
    eval_context: int = typer.Option(1024, help="Perplexity context length."),
    eval_tokens: Optional[int] = typer.Option(None, help="Use at most this many held-out tokens."),
    bos: bool = typer.Option(True, "--bos/--no-bos", help="Start calibration and evaluation windows with the tokenizer's BOS where it adds one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the equivalent recipe (YAML) and exit; writes nothing."),
    gates: Optional[List[str]] = typer.Option(None, "--gate", metavar="METRIC<=LIMIT", help=GATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Split each dense FFN into experts and fit a router per layer (FactorLLM); optionally evaluate and export."""
    from compress.cli.flags import flag_of

    with exit_codes(flag_of):
        stage = {"experts": experts, "top_k": top_k, "granularity": granularity, "split": split, "scale": scale, "train": train,
                 "expert_steps": expert_steps, "expert_lr": expert_lr, "expert_batch": expert_batch,
                 "distill_top": distill_top, "distill_weight": distill_weight, "lm_weight": lm_weight,
                 "steps": steps, "lr": lr, "batch_tokens": batch_tokens, "par_weight": par_weight,
                 "balance_weight": balance_weight, "seed": seed, "calib_batch": calib_batch}
        stages = [{"factorize": stage}]
        if eval:
            stages.append({"eval": {"text": eval_text, "dataset": eval_dataset, "text_field": text_field,
                                    "context": eval_context, "tokens": eval_tokens, "bos": bos}})
        data = {"model": model, "dtype": dtype, "device": device,
                "calibrate": {"text": text, "dataset": dataset, "text_field": text_field, "nsamples": nsamples,
                              "seqlen": seqlen, "seed": seed, "bos": bos},
                "stages": stages, "out": out_dir}
        from compress.cli.run import execute_flags

        data["gates"] = list(gates or []) or None
        execute_flags(data, dry_run, force, as_json, quiet)

