"""`compress prune`: a one-stage recipe (prune, then eval and export when asked) built from flags."""
from __future__ import annotations

from typing import List, Optional

import typer

from compress.cli.common import exit_codes
from compress.cli.run import GATE_HELP, RESUME_HELP

__all__ = ["prune"]

DEVICE_MAP_HELP = ("Spread the model with accelerate instead of streaming layers: auto | balanced | balanced_low_0 | "
                   "sequential | a JSON file of module: device (GPU index, cpu, disk). Overrides --device.")
MAX_MEMORY_HELP = "Per-device limits for --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB."
OFFLOAD_HELP = "Folder for weights a --device-map puts on disk (default: a temporary folder, removed at exit)."

EXAMPLES = """
Examples:

  compress prune --method wanda --pattern 2:4 --eval            # default model and text

  compress prune ./Llama-3-8B --method sparsegpt --pattern 6:8 --out ./llama-6of8

  compress prune model.gguf --sparsity 0.5 --method ria --text my.txt --nsamples 64

  compress prune ./Llama-3-8B --pattern 2:4 --dry-run > recipe.yaml   # the same job as a recipe
"""


def prune(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, help="HF model directory, .gguf file or hub id; default SmolLM2-135M-Instruct (dequantized Q4_1 GGUF)."),
    method: str = typer.Option("wanda", help="magnitude | wanda | sparsegpt | ria"),
    pattern: Optional[str] = typer.Option(None, help="N:M keeps N of every M weights along the input dim (2:4, 4:8, 6:8)."),
    sparsity: Optional[float] = typer.Option(None, help="Unstructured: fraction removed from each output row."),
    targets: Optional[str] = typer.Option(None, help="Regex over module names to prune (default: every Linear in decoder layers)."),
    ignore: Optional[str] = typer.Option(None, help="Regex over module names to leave dense."),
    text: Optional[str] = typer.Option(None, help="Calibration text: a .txt/.md file or .jsonl (see --text-field)."),
    dataset: Optional[str] = typer.Option(None, help="Calibration dataset NAME[:CONFIG][:SPLIT] (needs compress[datasets])."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl records or dataset rows."),
    nsamples: int = typer.Option(128, help="Calibration sequences."),
    seqlen: int = typer.Option(2048, help="Tokens per calibration sequence (capped at the model's maximum)."),
    seed: int = typer.Option(0, help="Seed for drawing the calibration windows."),
    blocksize: int = typer.Option(128, help="SparseGPT column block."),
    damp: float = typer.Option(0.01, help="SparseGPT Hessian damping, as a fraction of its mean diagonal."),
    ria_alpha: float = typer.Option(0.5, help="RIA activation exponent."),
    mask_rule: str = typer.Option("row", help="SparseGPT unstructured: row (same fraction per row and block) | block (one threshold per block, as the reference code)."),
    calib_batch: int = typer.Option(0, help="Calibration sequences per forward (0: about 16k tokens)."),
    permute: str = typer.Option("none", help="Input-channel permutation before N:M masking: none | heuristic | learned | global (learned against the dense model's output)."),
    perm_blocks: int = typer.Option(1, help="Split the Hungarian refinement into this many blocks (faster)."),
    perm_steps: int = typer.Option(8, help="Search rounds per Linear for --permute learned (stops early when a round gains < 0.1%)."),
    perm_block_size: int = typer.Option(64, help="--permute learned scores every channel swap inside windows of this many channels; --permute global permutes within blocks of this many."),
    perm_iters: int = typer.Option(0, help="--permute global: optimisation steps per decoder layer against the dense layer's output, before the model pass (0: off)."),
    perm_tokens: int = typer.Option(4096, help="Calibration tokens per optimisation step of --perm-iters."),
    perm_model_steps: int = typer.Option(30, help="--permute global: optimisation steps of the model pass, every layer at once against the dense model's final hidden states (0: off)."),
    perm_windows: int = typer.Option(2, help="Calibration windows per step of the --permute global model pass."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (auto: float32 on CPU)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu. The model stays in CPU memory; one layer at a time moves to the GPU."),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, help=MAX_MEMORY_HELP),
    offload_folder: Optional[str] = typer.Option(None, help=OFFLOAD_HELP),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Write the pruned model here (HF checkpoint + compression.json + recipe.yaml)."),
    export: str = typer.Option("hf", help="hf: plain HF checkpoint (zeros in place) | compressed: N:M values + bit masks, load with compress.load()."),
    force: bool = typer.Option(False, help="Replace --out if it holds an earlier output of compress (marked so in its compression.json)."),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    eval: bool = typer.Option(False, "--eval", help="Measure perplexity before and after on held-out text."),
    eval_text: Optional[str] = typer.Option(None, help="Held-out text file (default: Austen's Persuasion, never used for calibration)."),
    eval_dataset: Optional[str] = typer.Option(None, help="Held-out dataset NAME[:CONFIG][:SPLIT]."),
    eval_context: int = typer.Option(1024, help="Perplexity context length."),
    eval_tokens: Optional[int] = typer.Option(None, help="Use at most this many held-out tokens."),
    bos: bool = typer.Option(True, "--bos/--no-bos", help="Start calibration and evaluation windows with the tokenizer's BOS where it adds one."),
    trust_remote_code: bool = typer.Option(False, help="Allow code shipped with the checkpoint to run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the equivalent recipe (YAML) and exit; writes nothing."),
    gates: Optional[List[str]] = typer.Option(None, "--gate", metavar="METRIC<=LIMIT", help=GATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Prune a model layer by layer with N:M or unstructured sparsity, then optionally evaluate and export."""
    from compress.cli.flags import flag_of

    with exit_codes(flag_of):
        _refuse_what_does_not_apply(ctx, method, permute, eval, out_dir)

        stage = {"method": method, "targets": targets, "ignore": ignore, "blocksize": blocksize, "damp": damp,
                 "ria_alpha": ria_alpha, "mask_rule": mask_rule, "calib_batch": calib_batch, "permute": permute, "perm_blocks": perm_blocks,
                 "perm_steps": perm_steps, "perm_block_size": perm_block_size, "perm_iters": perm_iters,
                 "perm_tokens": perm_tokens, "perm_model_steps": perm_model_steps, "perm_windows": perm_windows}
        if pattern is not None or sparsity is None:
            stage["pattern"] = pattern if pattern is not None else "2:4"
        if sparsity is not None:
            stage["sparsity"] = sparsity
        stages = [{"prune": stage}]
        if eval:
            stages.append({"eval": {"text": eval_text, "dataset": eval_dataset, "text_field": text_field,
                                    "context": eval_context, "tokens": eval_tokens, "bos": bos}})
        if out_dir is not None:
            stages.append({"export": {"format": export}})
        data = {"model": model, "dtype": dtype, "device": device, "device_map": device_map, "max_memory": max_memory,
                "offload_folder": offload_folder, "trust_remote_code": trust_remote_code,
                "calibrate": {"text": text, "dataset": dataset, "text_field": text_field, "nsamples": nsamples,
                              "seqlen": seqlen, "seed": seed, "bos": bos},
                "stages": stages, "out": out_dir}
        from compress.cli.run import execute_flags

        data["gates"] = list(gates or []) or None
        execute_flags(data, dry_run, force, as_json, quiet, resume=resume)


def _given(ctx: typer.Context) -> set[str]:
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def _refuse_what_does_not_apply(ctx, method: str, permute: str, evaluate: bool, out_dir) -> None:
    """An option given on the command line that the job would ignore is an error naming it."""
    from compress.errors import BadInput

    given = _given(ctx)
    rules = [
        (("blocksize", "damp", "mask_rule"), method != "sparsegpt", f"--method {method} is not sparsegpt"),
        (("ria_alpha",), method != "ria", f"--method {method} is not ria"),
        (("text", "dataset", "nsamples", "seqlen", "seed", "calib_batch"),
         method == "magnitude" and permute not in ("learned", "global"), "magnitude uses no calibration data"),
        (("perm_blocks", "perm_steps", "perm_block_size", "perm_iters", "perm_tokens", "perm_model_steps",
          "perm_windows"), permute == "none",
         "there is no --permute"),
        (("perm_steps", "perm_block_size"), permute == "heuristic", "they tune --permute learned or global"),
        (("perm_steps",), permute == "global", "it tunes --permute learned"),
        (("perm_iters", "perm_tokens", "perm_model_steps", "perm_windows"), permute in ("heuristic", "learned"),
         "they tune --permute global"),
        (("eval_text", "eval_dataset", "eval_context", "eval_tokens"), not evaluate, "there is no --eval"),
        (("export", "force", "resume"), out_dir is None, "there is no --out"),
    ]
    for names, ignored, why in rules:
        for name in names:
            if ignored and name in given:
                raise BadInput(f"--{name.replace('_', '-')} does not apply: {why}")
