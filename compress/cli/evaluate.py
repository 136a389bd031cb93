"""`compress eval`: perplexity of one or more models on the same held-out text, side by side."""
from __future__ import annotations

from typing import List, Optional

import typer

from compress.cli.common import error_line, exit_codes, print_json, progress
from compress.cli.prune import DEVICE_MAP_HELP, MAX_MEMORY_HELP, OFFLOAD_HELP

__all__ = ["evaluate", "EXAMPLES"]

EXAMPLES = """
Examples:

  compress eval                                   # default model on held-out Austen text

  compress eval ./dense ./pruned --json           # side by side
"""


def evaluate(
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
    bos: bool = typer.Option(True, "--bos/--no-bos", help="Start each window with the tokenizer's BOS where it adds one."),
    trust_remote_code: bool = typer.Option(False, help="Allow code shipped with the checkpoint to run."),
    kernels: bool = typer.Option(False, "--kernels", help="Compressed exports on a GPU: perplexity and tokens/s on "
                                 "the dense path and on the sparse kernels, each forward replayed as a CUDA graph."),
    allow_fallback: bool = typer.Option(False, "--allow-fallback", help="With --kernels: report Linears that fell "
                                        "back to the dense path instead of failing (exit 1) on them."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Perplexity of one or more models on the same held-out text, side by side."""
    from compress.cli.flags import flag_of

    with exit_codes(flag_of):
        from compress.cli.flags import label_for_cli
        from compress.cli.render import print_compare_report
        from compress.pipeline.compare import CompareConfig, KernelFallback, compare_models
        from compress.pipeline.recipe import validate_config

        config = validate_config(CompareConfig, {
            "models": list(models or [None]), "text": text, "dataset": dataset, "text_field": text_field,
            "context": context, "tokens": max_tokens, "dtype": dtype, "device": device, "device_map": device_map,
            "max_memory": max_memory, "offload_folder": offload_folder, "trust_remote_code": trust_remote_code,
            "kernels": kernels, "allow_fallback": allow_fallback, "bos": bos}, label=label_for_cli)
        with progress(quiet or as_json) as hooks:
            try:
                report = compare_models(config, hooks)
            except KernelFallback as exc:
                error_line("error:", f"{exc} (--allow-fallback reports them instead)")
                raise typer.Exit(1)
        if as_json:
            print_json(report.model_dump(mode="json"))
        else:
            print_compare_report(report)
