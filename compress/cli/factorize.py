"""`compress factorize`: a one-stage recipe (factorize, then eval and a stock MoE export when asked) from flags."""
from __future__ import annotations

from typing import List, Optional

import typer

from compress.cli.common import exit_codes
from compress.cli.run import GATE_HELP

__all__ = ["factorize", "EXAMPLES"]

EXAMPLES = """
Examples:

  compress factorize --eval                                        # default model and text, 50% of the FFN active

  compress factorize --active 0.25 --eval --out ./smollm-moe       # a quarter of the neurons per token

  compress factorize --shared 2 --experts 14 --top-k 2 --eval       # CMoE's S2A2E16, spelled out

  compress factorize --router par --split contiguous --experts 4 --top-k 1 --eval   # FactorLLM's 1R4E1K

  compress factorize ./model --experts 4 --top-k 1 --dry-run > recipe.yaml   # the same job as a recipe
"""


def factorize(
    model: Optional[str] = typer.Argument(None, help="HF model directory, .gguf file or hub id; default SmolLM2-135M-Instruct (dequantized Q4_1 GGUF)."),
    active: Optional[float] = typer.Option(None, help="Share of the FFN's neurons each token runs: 0.25 | 0.5 | 0.75 | 1 (any multiple of 1/16); sets --shared, --experts and --top-k. Default 0.5 when none of those is given."),
    shared: Optional[int] = typer.Option(None, help="S: neuron groups (each as wide as an expert) every token runs, the most often active ones."),
    experts: Optional[int] = typer.Option(None, help="E: routed experts per FFN."),
    top_k: Optional[int] = typer.Option(None, help="k: routed experts each token runs (top-k of the router's softmax, renormalised)."),
    router: str = typer.Option("analytic", help="analytic: closed-form linear router from calibration statistics, no training | par: FactorLLM's router fitted to PAR labels (--steps)."),
    balance: bool = typer.Option(True, "--balance/--no-balance", help="analytic router: offsets that give each expert its fair share of calibration tokens."),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help="Refit the down projections by least squares to the dense FFN's outputs given the routing (default: on with the analytic router)."),
    activity_top: int = typer.Option(150, help="Neurons counted active per calibration token when picking shared neurons and carving experts (CMoE's K_a)."),
    granularity: int = typer.Option(1, help="G: cut each expert into G (G·E experts, top G·k)."),
    split: str = typer.Option("carve", help="carve (CMoE: balanced co-activation clusters seeded by the most active neurons) | contiguous | random | cluster (k-means on gate/up rows) | coactivation."),
    scale: str = typer.Option("top-k", help="Factor folded into each expert's down projection: top-k (k: the chosen experts' neurons add up as in the dense FFN) | experts (E: FactorLLM's ×E/k)."),
    train: str = typer.Option("router", help="router: fit each layer's router to PAR pseudo-labels (experts stay slices of the dense FFN) | router+experts: then train experts and routers end to end, distilling the dense model."),
    expert_steps: int = typer.Option(100, help="router+experts: Adam steps over batches of calibration windows."),
    expert_lr: float = typer.Option(1e-4, help="router+experts: learning rate (cosine schedule)."),
    expert_batch: int = typer.Option(4, help="router+experts: calibration windows per step."),
    distill_top: int = typer.Option(64, help="router+experts: the dense model's top-K next-token probabilities kept as the target."),
    distill_weight: float = typer.Option(1.0, help="router+experts: weight of the distillation loss."),
    lm_weight: float = typer.Option(0.0, help="router+experts: weight of the next-token loss on the calibration text."),
    steps: Optional[int] = typer.Option(None, help="Router Adam steps per layer: default 200 with --router par (0: split only, zero router), 0 with analytic (more: a short fine-tune of it)."),
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
    out_dir: Optional[str] = typer.Option(None, "--out", help="Write a stock MoE checkpoint here (Qwen2, and Llama/Mistral with shared neurons -> Qwen2-MoE with a shared expert; Llama/Mistral without -> Mixtral; Qwen3 -> Qwen3-MoE, shared neurons folded into every expert) with compression.json."),
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
    """Split each dense FFN into shared neurons and routed experts with a router per layer (CMoE-style, training-free
    by default; FactorLLM's PAR router as an option); optionally evaluate and export a stock MoE."""
    from compress.cli.flags import flag_of

    with exit_codes(flag_of):
        stage = {"active": active, "shared": shared, "experts": experts, "top_k": top_k, "router": router,
                 "balance": balance, "refit": refit, "activity_top": activity_top, "granularity": granularity, "split": split, "scale": scale, "train": train,
                 "expert_steps": expert_steps, "expert_lr": expert_lr, "expert_batch": expert_batch,
                 "distill_top": distill_top, "distill_weight": distill_weight, "lm_weight": lm_weight,
                 "steps": steps, "lr": lr, "batch_tokens": batch_tokens, "par_weight": par_weight,
                 "balance_weight": balance_weight, "seed": seed, "calib_batch": calib_batch}
        stage = {key: value for key, value in stage.items() if value is not None}
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

