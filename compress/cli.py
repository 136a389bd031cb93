"""The `compress` command: a thin Typer layer over compress.jobs. Heavy imports happen inside commands."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import List, Optional

import typer
from rich.console import Console

from compress import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Post-training compression for Hugging Face causal LMs: calibrate, prune, export, evaluate.\n\n"
    "Environment: COMPRESS_CACHE (default ~/.cache/compress) holds the default model and text; "
    "COMPRESS_DEBUG=1 shows tracebacks.",
)
err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        print(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    pass


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@contextmanager
def _exit_codes():
    """Bad input: one line, exit 2. Anything else: one line, exit 1 (traceback with COMPRESS_DEBUG=1)."""
    from compress.errors import BadInput

    _quiet_libraries()
    try:
        yield
    except BadInput as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)
    except typer.Exit:
        raise
    except Exception as exc:
        from compress.defaults.assets import AssetError

        if isinstance(exc, AssetError):
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        if os.environ.get("COMPRESS_DEBUG"):
            raise
        err.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _text_source(path, dataset, text_field):
    from compress.calibrate.data import TextSource
    from compress.errors import BadInput

    if path and dataset:
        raise BadInput("give a text file or a dataset, not both")
    return TextSource(path=path, dataset=dataset, text_field=text_field)


@contextmanager
def _layer_progress(quiet: bool):
    """Rich progress over decoder layers (stderr), with stage messages; yields jobs.Hooks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from compress.jobs import Hooks

    if quiet:
        yield Hooks()
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True)
    task = {}

    def layer(step, total):
        if "id" not in task:
            task["id"] = progress.add_task("pruning layers", total=total)
        progress.update(task["id"], advance=1, description=f"({step.index + 1}/{total}) {step.name}")

    with progress:
        yield Hooks(stage=lambda message: progress.console.print(f"[dim]•[/dim] {message}"), layer=layer)


DEVICE_MAP_HELP = ("Spread the model with accelerate instead of streaming layers: auto | balanced | balanced_low_0 | "
                   "sequential | a JSON file of module: device (GPU index, cpu, disk). Overrides --device.")
MAX_MEMORY_HELP = "Per-device limits for --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB."
OFFLOAD_HELP = "Folder for weights a --device-map puts on disk (default: a temporary folder, removed at exit)."

EXAMPLES_PRUNE = """
Examples:

  compress prune --method wanda --pattern 2:4 --eval            # default model and text

  compress prune ./Llama-3-8B --method sparsegpt --pattern 6:8 --out ./llama-6of8

  compress prune model.gguf --sparsity 0.5 --method ria --text my.txt --nsamples 64

  compress prune ./Llama-3-70B --device-map auto --max-memory 0=70GiB,1=70GiB,cpu=200GiB --out ./l70-2of4
"""


@app.command(epilog=EXAMPLES_PRUNE)
def prune(
    model: Optional[str] = typer.Argument(None, help="HF model directory, .gguf file or hub id; default SmolLM2-135M-Instruct."),
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
    calib_batch: int = typer.Option(0, help="Calibration sequences per forward (0: about 16k tokens)."),
    permute: str = typer.Option("none", help="Input-channel permutation before N:M masking: none | heuristic | learned."),
    perm_blocks: int = typer.Option(1, help="Split the Hungarian refinement into this many blocks (faster)."),
    perm_steps: int = typer.Option(8, help="Search rounds per Linear for --permute learned (stops early when a round gains < 0.1%)."),
    perm_block_size: int = typer.Option(64, help="--permute learned scores every channel swap inside windows of this many channels."),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU, bfloat16 on GPU) | float32 | bfloat16 | float16"),
    device: str = typer.Option("auto", help="auto | cuda | cpu. The model stays in CPU memory; one layer at a time moves to the GPU."),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, help=MAX_MEMORY_HELP),
    offload_folder: Optional[str] = typer.Option(None, help=OFFLOAD_HELP),
    out: Optional[str] = typer.Option(None, help="Write the pruned model here (HF checkpoint + compression.json)."),
    export: str = typer.Option("hf", help="hf: plain HF checkpoint (zeros in place) | compressed: N:M values + bit masks, load with compress.load()."),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
    eval: bool = typer.Option(False, "--eval", help="Measure perplexity before and after on held-out text."),
    eval_text: Optional[str] = typer.Option(None, help="Held-out text file (default: Austen's Persuasion, never used for calibration)."),
    eval_dataset: Optional[str] = typer.Option(None, help="Held-out dataset NAME[:CONFIG][:SPLIT]."),
    eval_context: int = typer.Option(1024, help="Perplexity context length."),
    eval_tokens: Optional[int] = typer.Option(None, help="Use at most this many held-out tokens."),
    trust_remote_code: bool = typer.Option(False, help="Allow code shipped with the checkpoint to run."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Prune a model layer by layer with N:M or unstructured sparsity, then optionally evaluate and export."""
    with _exit_codes():
        from compress.jobs import PruneJob, run_prune
        from compress.permute import PermuteConfig
        from compress.permute.learned import LearnConfig
        from compress.pattern import parse_pattern

        job = PruneJob(
            model=model, method=method,
            pattern=parse_pattern(pattern if pattern is not None or sparsity is not None else "2:4", sparsity),
            targets=targets, ignore=ignore, calibration=_text_source(text, dataset, text_field),
            nsamples=nsamples, seqlen=seqlen, seed=seed,
            options={"blocksize": blocksize, "damp": damp, "ria_alpha": ria_alpha}, calib_batch=calib_batch,
            dtype=dtype, device=device, out=out, export=export, force=force, evaluate=eval,
            evaluation=_text_source(eval_text, eval_dataset, text_field), eval_context=eval_context,
            eval_tokens=eval_tokens, trust_remote_code=trust_remote_code,
            permute=PermuteConfig(permute, perm_blocks, LearnConfig(block=perm_block_size, steps=perm_steps)),
            device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
        )
        with _layer_progress(quiet or as_json) as hooks:
            report = run_prune(job, hooks=hooks)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            from compress.report import print_prune_report

            print_prune_report(report, out)


EXAMPLES_EVAL = """
Examples:

  compress eval                                   # default model on held-out Austen text

  compress eval ./dense ./pruned --json           # side by side
"""


@app.command("eval", epilog=EXAMPLES_EVAL)
def eval_(
    models: Optional[List[str]] = typer.Argument(None, help="Models to compare (default: the default model)."),
    text: Optional[str] = typer.Option(None, help="Held-out text file (default: Austen's Persuasion)."),
    dataset: Optional[str] = typer.Option(None, help="Held-out dataset NAME[:CONFIG][:SPLIT]."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl records or dataset rows."),
    context: int = typer.Option(1024, help="Perplexity context length."),
    max_tokens: Optional[int] = typer.Option(None, help="Use at most this many held-out tokens."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, help=MAX_MEMORY_HELP),
    offload_folder: Optional[str] = typer.Option(None, help=OFFLOAD_HELP),
    trust_remote_code: bool = typer.Option(False, help="Allow code shipped with the checkpoint to run."),
    kernels: bool = typer.Option(False, "--kernels", help="Compressed exports on a GPU: perplexity and tokens/s on "
                                 "the dense path and on the sparse kernels, each forward replayed as a CUDA graph."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Perplexity of one or more models on the same held-out text, side by side."""
    with _exit_codes():
        from compress.jobs import EvalJob, run_eval

        job = EvalJob(models=list(models or [None]), evaluation=_text_source(text, dataset, text_field),
                      context=context, max_tokens=max_tokens, dtype=dtype, device=device,
                      trust_remote_code=trust_remote_code, device_map=device_map, max_memory=max_memory,
                      offload_folder=offload_folder, kernels=kernels)
        with _layer_progress(quiet or as_json) as hooks:
            report = run_eval(job, hooks=hooks)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            from compress.report import print_eval_report

            print_eval_report(report)


bench_app = typer.Typer(help="Measurements on the GPU.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("kernels")
def bench_kernels_command(
    shapes: Optional[List[str]] = typer.Option(None, "--shape", help="Shape names (default: all Llama 7B/8B/70B shapes)."),
    tokens: Optional[List[int]] = typer.Option(None, "--tokens", help="Token counts M (default 1 16 256 2048 8192 16384)."),
    dtypes: Optional[List[str]] = typer.Option(None, "--dtype", help="float16 and/or bfloat16 (default both)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write all rows to this JSON file."),
) -> None:
    """Time cuBLAS dense vs torch 2:4 vs cuSPARSELt 2:4 vs 6:8 slide on random N:M weights (needs CUDA)."""
    with _exit_codes():
        from compress.errors import BadInput
        from compress.kernels.bench import SHAPES, bench_kernels

        unknown = [s for s in shapes or [] if s not in SHAPES]
        if unknown:
            raise BadInput(f"unknown shape {unknown[0]!r}: choose from {', '.join(SHAPES)}")
        result = bench_kernels(shapes or list(SHAPES), tokens or [1, 16, 256, 2048, 8192, 16384],
                               dtypes or ["float16", "bfloat16"],
                               on_row=lambda row: out.print(_kernel_row(row), highlight=False))
        if json_out:
            with open(json_out, "w") as f:
                json.dump(result, f, indent=2)


def _kernel_row(row: dict) -> str:
    def speed(key):
        return f"{row[key]:.2f}x" if key in row else "n/a"

    return (f"{row['dtype']:>8} {row['shape']:<12} M={row['M']:<6} dense {row['dense_ms']:.4f} ms  "
            f"torch2:4 {speed('torch24_speedup')}  cslt2:4 {speed('cslt24_speedup')}  6:8 slide {speed('slide68_speedup')}")


if __name__ == "__main__":
    app()
